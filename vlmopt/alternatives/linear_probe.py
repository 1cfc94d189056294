"""The linear probe: scikit-learn's logistic regression on frozen image embeddings.

The held-out protocol stays the VLM runs' one. By default the probe trains on the train split
(the VLM's demo pool) and val picks the inverse regularisation ``C`` from :data:`C_GRID` (as val
picks the VLM's prompt); test is scored once. With ``train_and_val`` the probe trains on both,
and then val may not choose anything: ``C`` is fixed (1.0, scikit-learn's default, unless given)
and no selection happens. Either way the test split is never seen before scoring.

This is the one module of the package that imports scikit-learn (the ``baselines`` extra);
nothing imports it until a probe is asked for.

Example::

    fit = fit_probe(train_x, train_y, labels, val=(val_x, val_y), seed=0)
    probs = fit.probabilities(test_x)        # (n, k), columns in ``labels`` order
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmopt.errors import VlmoptError

C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
"""Inverse regularisation strengths val chooses from (ties go to the smaller, more regularised C)."""
FIXED_C = 1.0
MAX_ITER = 2000


class ProbeDependencyError(VlmoptError, ImportError):
    """scikit-learn, which the linear probe needs, is not installed."""


def _logistic_regression():
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ProbeDependencyError(
            "the linear probe needs scikit-learn: pip install 'vlmopt[baselines]' (or run without --probe)"
        ) from None
    return LogisticRegression


@dataclass
class ProbeFit:
    """A fitted probe, how its C was chosen, and what fitting cost."""

    model: object  # sklearn.linear_model.LogisticRegression
    labels: list[str]
    C: float
    val_accuracy_by_C: dict[str, float] | None  # None: C was fixed, val chose nothing
    trained_on: list[str]
    n_train: int
    fit_s: float

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(n, k)`` class probabilities, columns in ``labels`` order (scikit-learn sorts its classes)."""
        columns = [list(self.model.classes_).index(label) for label in self.labels]
        return self.model.predict_proba(features)[:, columns]

    @property
    def parameters(self) -> int:
        """Weights and intercepts of the probe."""
        return int(self.model.coef_.size + self.model.intercept_.size)

    def summary(self) -> dict:
        return {
            "C": self.C,
            "val_accuracy_by_C": self.val_accuracy_by_C,
            "trained_on": self.trained_on,
            "n_train": self.n_train,
            "fit_s": self.fit_s,
            "max_iter": MAX_ITER,
            "n_iter": [int(n) for n in np.atleast_1d(self.model.n_iter_)],
        }


def _fit(x: np.ndarray, y: Sequence[str], C: float, seed: int):
    return _logistic_regression()(C=C, max_iter=MAX_ITER, random_state=seed).fit(x, list(y))


def fit_probe(
    train_x: np.ndarray,
    train_y: Sequence[str],
    labels: Sequence[str],
    *,
    val: tuple[np.ndarray, Sequence[str]] | None = None,
    train_and_val: bool = False,
    C: float | None = None,
    seed: int = 0,
) -> ProbeFit:
    """Fit the probe under the protocol in the module docstring.

    ``val`` is required with ``train_and_val`` (it becomes training data) and used for choosing C
    otherwise, unless ``C`` is given.
    """
    started = time.perf_counter()
    scores = None
    if train_and_val:
        if val is None:
            raise ValueError("train_and_val needs the val split's features and labels")
        x, y = np.concatenate([train_x, val[0]]), [*train_y, *val[1]]
        chosen, trained_on = FIXED_C if C is None else C, ["train", "val"]
    else:
        x, y, trained_on = train_x, list(train_y), ["train"]
        if C is None and val is not None:
            scores = {}
            for candidate in C_GRID:
                predicted = _fit(x, y, candidate, seed).predict(val[0])
                scores[f"{candidate:g}"] = float(np.mean(predicted == np.asarray(val[1])))
            chosen = max(C_GRID, key=lambda c: (scores[f"{c:g}"], -c))
        else:
            chosen = FIXED_C if C is None else C
    model = _fit(x, y, chosen, seed)
    return ProbeFit(model, list(labels), chosen, scores, trained_on, len(y), time.perf_counter() - started)
