"""Calibration of answer confidences: expected calibration error, reliability bins, Brier score.

A classifier that says 0.99 should be right 99% of the time before an app thresholds on it.
Inputs are per-example ``confidence`` (probability the model gave to *its own* answer) and
``correct`` (1/0). Bins are equal-width on [0, 1]: bin ``b`` of ``B`` holds confidences in
``[b/B, (b+1)/B)``, the last bin also holds 1.0 — ``numpy.histogram``'s rule, compared against
the bin bounds as reported (an edge such as 5/7 opens its bin exactly; multiplying by ``B`` and
truncating would misplace it). scikit-learn's ``calibration_curve(strategy="uniform")`` closes
bins on the right instead (an edge joins the lower bin); off the edges the per-bin accuracy and
mean confidence are the same as its ``prob_true`` / ``prob_pred`` (tests/test_metrics_oracle.py).

    ECE = sum_b (n_b / n) * |accuracy_b - mean confidence_b|

Example::

    calibration([0.9, 0.9, 0.6, 0.6], [1, 0, 1, 1], n_bins=10)["ece"]
    # bin [0.6, 0.7): conf 0.6, acc 1.0 -> gap 0.4; bin [0.9, 1.0]: conf 0.9, acc 0.5 -> gap 0.4
    # ECE = 0.5 * 0.4 + 0.5 * 0.4 = 0.4
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def calibration(
    confidence: Sequence[float] | np.ndarray, correct: Sequence[bool] | np.ndarray, *, n_bins: int = 10
) -> dict[str, Any]:
    """ECE plus reliability-diagram data.

    Returns ``{"n", "n_bins", "ece", "bins"}``; ``bins`` lists every bin as ``{"lower",
    "upper", "count", "confidence", "accuracy"}`` (mean confidence and accuracy are None for an
    empty bin, so the diagram can show gaps). With no examples ``ece`` is None.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"confidence {conf.shape} and correct {hit.shape} must be 1-D and equal length")
    if conf.size and (np.isnan(conf).any() or conf.min() < 0.0 or conf.max() > 1.0):
        raise ValueError("confidences must lie in [0, 1]")
    edges = np.arange(n_bins + 1) / n_bins  # exactly b / n_bins, the bounds reported below
    which = np.digitize(conf, edges[1:-1])
    bins = []
    ece = 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        mean_conf = float(conf[members].mean()) if count else None
        accuracy = float(hit[members].mean()) if count else None
        if count:
            ece += count / conf.size * abs(accuracy - mean_conf)
        bins.append(
            {"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": count,
             "confidence": mean_conf, "accuracy": accuracy}
        )
    return {"n": int(conf.size), "n_bins": n_bins, "ece": float(ece) if conf.size else None, "bins": bins}


def brier_score(probabilities: Sequence[Mapping[str, float]], gold: Sequence[str]) -> float:
    """Multi-class Brier score: mean over examples of ``sum_k (p_k - [k == gold])^2``.

    A label missing from an example's probability dict has probability 0. Ranges from 0
    (certain and right) to 2 (certain and wrong).
    """
    if len(probabilities) != len(gold):
        raise ValueError(f"{len(probabilities)} probability dicts but {len(gold)} gold labels")
    if not gold:
        raise ValueError("no examples to score")
    total = 0.0
    for probs, g in zip(probabilities, gold, strict=True):
        total += sum((p - (label == g)) ** 2 for label, p in probs.items())
        if g not in probs:
            total += 1.0
    return total / len(gold)
