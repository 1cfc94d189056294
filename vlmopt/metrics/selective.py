"""Selective classification: answer only when confident enough, and measure what that buys.

A classifier that may abstain trades **coverage** (the share of images it answers) for
**accuracy on the answered** ones. Both are read off one rule over a per-image confidence:

    answer  iff  confidence >= threshold        (else abstain; the top label is kept as a suggestion)

The confidence is computed from the measured label distribution ``P`` (never from numbers the
model writes), in one of two ways (:data:`CONFIDENCES`):

* ``max_prob`` — ``max_k P(k)``, the probability of the most likely label;
* ``margin`` — ``P(top1) - P(top2)``, how far the best label leads the runner-up.

An image without a measured distribution (an invalid answer) has no confidence: it is never
"answered" here, and it is no abstention either (``evaluate`` counts it as invalid).

:func:`risk_coverage` is the whole trade-off on a split (one point per distinct confidence);
:func:`choose_threshold` picks the point that meets a goal — the largest coverage whose accuracy
on the answered reaches ``target_accuracy``, or the strictest threshold that still answers at
least ``coverage`` — and puts the threshold midway between that point's lowest answered
confidence and the next one, so numbers that differ in the last digits between backends fall on
the same side. It is meant for **val**: the same threshold on test may miss the target, and
:func:`selective_metrics` reports test as it falls, with intervals.

Example::

    conf = [confidence_of(p, "margin") for p in distributions]
    choice = choose_threshold(conf, correct, target_accuracy=0.95)
    choice["threshold"], choice["coverage"], choice["accuracy"], choice["met"]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from vlmopt.metrics.bootstrap import bootstrap_interval

Confidence = Literal["max_prob", "margin"]
CONFIDENCES: tuple[Confidence, ...] = ("max_prob", "margin")


def confidence_of(probabilities: Mapping[str, float], kind: str) -> float:
    """The confidence of a measured label distribution (see the module docstring)."""
    ranked = sorted(probabilities.values(), reverse=True)
    if not ranked:
        raise ValueError("an empty label distribution has no confidence")
    if kind == "max_prob":
        return float(ranked[0])
    if kind == "margin":
        return float(ranked[0] - (ranked[1] if len(ranked) > 1 else 0.0))
    raise ValueError(f"unknown confidence {kind!r}; expected one of {list(CONFIDENCES)}")


def answers(confidence: float | None, threshold: float) -> bool:
    """The rule: answer iff the confidence reaches the threshold; no confidence, no answer."""
    return confidence is not None and confidence >= threshold


def risk_coverage(confidences: Sequence[float | None], correct: Sequence[bool]) -> list[dict[str, Any]]:
    """Coverage and accuracy on the answered for every threshold that changes them, strictest first.

    Point ``i`` answers every image whose confidence is at least ``confidence`` (ties answer
    together): ``{"confidence", "n_answered", "coverage", "accuracy"}``, coverage over all images
    (those without a confidence included, never answered).
    """
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences but {len(correct)} correctness values")
    n = len(confidences)
    scored = sorted(((c, bool(ok)) for c, ok in zip(confidences, correct, strict=True) if c is not None),
                    key=lambda pair: -pair[0])
    points: list[dict[str, Any]] = []
    answered = right = 0
    for position, (value, ok) in enumerate(scored):
        answered += 1
        right += ok
        if position + 1 < len(scored) and scored[position + 1][0] == value:
            continue  # equal confidences are answered together
        points.append({"confidence": value, "n_answered": answered, "coverage": answered / n,
                       "accuracy": right / answered})
    return points


def choose_threshold(
    confidences: Sequence[float | None],
    correct: Sequence[bool],
    *,
    target_accuracy: float | None = None,
    coverage: float | None = None,
) -> dict[str, Any]:
    """The threshold for exactly one goal, and what it gives on these examples (see the module docstring).

    Returns ``{"threshold", "n", "n_answered", "coverage", "accuracy", "met"}``; ``accuracy`` is on
    the answered (None when nothing is). When no point meets the goal, ``met`` is False and the
    threshold is the safe end: above every confidence for a target accuracy (abstain on all),
    the loosest point for a coverage (answer every image that has a confidence).
    """
    if (target_accuracy is None) == (coverage is None):
        raise ValueError("give exactly one goal: target_accuracy or coverage")
    curve = risk_coverage(confidences, correct)
    values = sorted({c for c in confidences if c is not None}, reverse=True)
    if target_accuracy is not None:
        feasible = [i for i, p in enumerate(curve) if p["accuracy"] >= target_accuracy]
        chosen = feasible[-1] if feasible else None
    else:
        feasible = [i for i, p in enumerate(curve) if p["coverage"] >= coverage]
        chosen = feasible[0] if feasible else (len(curve) - 1 if curve else None)
    met = bool(feasible)
    if chosen is None:  # abstain on everything: above the highest confidence
        top = values[0] if values else 1.0
        return {"threshold": _above(top), "n": len(confidences), "n_answered": 0, "coverage": 0.0,
                "accuracy": None, "met": met}
    point = curve[chosen]
    lower = values[chosen + 1] if chosen + 1 < len(values) else None
    threshold = point["confidence"] if lower is None else (point["confidence"] + lower) / 2
    return {"threshold": float(threshold), "n": len(confidences), "n_answered": point["n_answered"],
            "coverage": point["coverage"], "accuracy": point["accuracy"], "met": met}


def _above(value: float) -> float:
    """A threshold no confidence reaches: midway to 1, or just past it."""
    return (value + 1.0) / 2 if value < 1.0 else float(np.nextafter(value, np.inf))


def selective_metrics(
    abstained: Sequence[bool],
    correct: Sequence[bool],
    valid: Sequence[bool],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Coverage, accuracy on the answered and accuracy overall of one split, each with its interval.

    ``answered`` = valid and not abstained. ``accuracy_overall`` is the top label's accuracy on
    every image (what answering all would give); ``accuracy_answered`` is None when nothing was
    answered. Intervals are the seeded percentile bootstrap of :mod:`.bootstrap`.
    """
    abstain = np.asarray(abstained, dtype=bool)
    hit = np.asarray(correct, dtype=float)
    ok = np.asarray(valid, dtype=bool)
    if not (abstain.shape == hit.shape == ok.shape) or abstain.ndim != 1 or abstain.size == 0:
        raise ValueError("abstained, correct and valid must be non-empty 1-D sequences of equal length")
    answered = ok & ~abstain
    boot = dict(n_boot=n_boot, seed=seed, level=level)
    on_answered = hit[answered]
    return {
        "n": int(abstain.size),
        "n_answered": int(answered.sum()),
        "n_abstained": int(abstain.sum()),
        "n_invalid": int((~ok).sum()),
        "coverage": float(answered.mean()),
        "coverage_ci": bootstrap_interval(answered.astype(float), **boot),
        "accuracy_answered": float(on_answered.mean()) if on_answered.size else None,
        "accuracy_answered_ci": bootstrap_interval(on_answered, **boot) if on_answered.size else None,
        "accuracy_overall": float(hit.mean()),
        "accuracy_overall_ci": bootstrap_interval(hit, **boot),
    }
