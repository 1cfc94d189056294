"""Single-label metrics: accuracy, confusion matrix with an ``invalid`` column, per-class P/R/F1.

Predictions are plain sequences here (``None`` = invalid output) so a notebook can call these
without building records. Invalid outputs are wrong answers: they sit in their own confusion
column, lower accuracy and the recall of their gold class, and never count as a prediction of
any class.

Zero-division conventions (the same as scikit-learn's ``zero_division=0``):

- precision of a class never predicted = 0.0
- recall of a class with no gold examples (support 0) = 0.0
- F1 = 0.0 when precision + recall = 0
- macro-F1 averages F1 over the classes that occur in the gold labels *or* in the valid
  predictions; a class absent from both carries no evidence and is left out of the mean
  (scikit-learn's default label set). Invalid answers are no class: scikit-learn, handed them
  as a label value, would average a zero F1 for them into the mean; here they cost recall only.

tests/test_metrics_oracle.py holds all of these to scikit-learn's numbers (a dev dependency only,
so it is never imported here).

Example::

    m = single_label_metrics(["cat", "dog", "dog"], ["cat", None, "cat"], labels=["cat", "dog"])
    m["accuracy"]            # 1/3: the invalid answer counts as wrong
    m["confusion"]["matrix"] # [[1, 0, 0], [1, 0, 1]]  (columns: cat, dog, invalid)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

INVALID = "invalid"
"""Name of the extra confusion-matrix column that counts invalid outputs."""


def label_index(labels: Sequence[str]) -> dict[str, int]:
    """Label -> position; refuses an empty or repeating label list (counts would be ambiguous)."""
    if not labels:
        raise ValueError("labels is empty")
    index = {label: i for i, label in enumerate(labels)}
    if len(index) != len(labels):
        raise ValueError(f"labels repeat: {sorted({x for x in labels if list(labels).count(x) > 1})}")
    return index


def item_name(position: int, ids: Sequence[str] | None) -> str:
    """How an error message names an example: by its record id when known, else by position."""
    return f"record {ids[position]!r}" if ids is not None else f"example {position}"


def confusion_matrix(
    gold: Sequence[str],
    predicted: Sequence[str | None],
    labels: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
) -> np.ndarray:
    """Counts of (gold, predicted), shape ``(len(labels), len(labels) + 1)``.

    Rows are gold labels and columns predicted labels, both in ``labels`` order; the last
    column counts invalid outputs (``None``). A gold or predicted label outside ``labels`` is a
    ValueError naming the example (by ``ids`` when given): the parser upstream must have marked
    such an output invalid.
    """
    index = label_index(labels)
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    counts = np.zeros((len(labels), len(labels) + 1), dtype=int)
    invalid_col = len(labels)
    for position, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if g not in index:
            raise ValueError(f"{item_name(position, ids)}: gold label {g!r} is not one of {list(labels)}")
        if p is not None and p not in index:
            raise ValueError(
                f"{item_name(position, ids)}: predicted {p!r} is not one of {list(labels)}; "
                "an answer outside the class set must be recorded as invalid (None)"
            )
        counts[index[g], invalid_col if p is None else index[p]] += 1
    return counts


def precision_recall_f1(
    true_positive: np.ndarray, n_predicted: np.ndarray, support: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from counts, with the module's 0.0 zero-division rule."""
    tp = np.asarray(true_positive, dtype=float)
    pred = np.asarray(n_predicted, dtype=float)
    sup = np.asarray(support, dtype=float)
    precision = np.divide(tp, pred, out=np.zeros_like(tp), where=pred > 0)
    recall = np.divide(tp, sup, out=np.zeros_like(tp), where=sup > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return precision, recall, f1


def per_class_table(
    labels: Sequence[str], true_positive: np.ndarray, n_predicted: np.ndarray, support: np.ndarray
) -> dict[str, dict[str, float | int]]:
    """``{label: {precision, recall, f1, support}}`` as plain Python numbers (JSON-ready)."""
    precision, recall, f1 = precision_recall_f1(true_positive, n_predicted, support)
    return {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }


def macro_f1(f1: np.ndarray, n_predicted: np.ndarray, support: np.ndarray) -> float:
    """Mean F1 over classes seen in gold or in predictions (see the module docstring)."""
    seen = (np.asarray(support) > 0) | (np.asarray(n_predicted) > 0)
    return float(np.asarray(f1)[seen].mean()) if seen.any() else 0.0


def single_label_metrics(
    gold: Sequence[str],
    predicted: Sequence[str | None],
    labels: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, invalid rate, macro-F1, per-class P/R/F1/support and the confusion matrix.

    Returns a JSON-ready dict with keys ``n``, ``n_invalid``, ``invalid_rate``, ``accuracy``,
    ``macro_f1``, ``per_class`` and ``confusion`` (``labels``, ``columns`` = labels + invalid,
    ``matrix`` as nested lists, rows = gold).
    """
    counts = confusion_matrix(gold, predicted, labels, ids=ids)
    if counts.sum() == 0:
        raise ValueError("no examples to score")
    square = counts[:, : len(labels)]
    true_positive = np.diag(square)
    n_predicted = square.sum(axis=0)
    support = counts.sum(axis=1)
    _, _, f1 = precision_recall_f1(true_positive, n_predicted, support)
    n = int(counts.sum())
    n_invalid = int(counts[:, -1].sum())
    return {
        "n": n,
        "n_invalid": n_invalid,
        "invalid_rate": n_invalid / n,
        "accuracy": float(true_positive.sum() / n),
        "macro_f1": macro_f1(f1, n_predicted, support),
        "per_class": per_class_table(labels, true_positive, n_predicted, support),
        "confusion": {
            "labels": list(labels),
            "columns": [*labels, INVALID],
            "matrix": counts.tolist(),
        },
    }


def other_label_summary(
    gold: Sequence[str], predicted: Sequence[str | None], abstained: Sequence[bool], other: str
) -> dict[str, Any]:
    """How often the "none of these" label was the gold answer, predicted, and given (not abstained on).

    ``other`` is scored like any class (its per-class row); this summary sets it apart, so a report
    can say "answered *other*" and "abstained" as the two different decisions they are.
    """
    predicted_other = [p == other for p in predicted]
    hits = sum(p == other and g == other for g, p in zip(gold, predicted, strict=True))
    n_gold, n_predicted = sum(g == other for g in gold), sum(predicted_other)
    return {
        "label": other,
        "n_gold": n_gold,
        "n_predicted": n_predicted,
        "n_answered": sum(p and not a for p, a in zip(predicted_other, abstained, strict=True)),
        "precision": hits / n_predicted if n_predicted else 0.0,
        "recall": hits / n_gold if n_gold else 0.0,
    }
