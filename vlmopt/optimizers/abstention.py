"""Choose the frozen program's abstention threshold on val, and report it on test untouched.

After the search (and ReAnchor, when kept) the optimized program's val records hold the label
distribution each decision was taken on. For the user's one goal (``optimizer.abstain``: a
``target_accuracy`` on the answered, or a ``coverage``) this module picks the threshold on those
val records (:func:`vlmopt.metrics.selective.choose_threshold`), on the configured confidence
(``max_prob`` or ``margin``) or, with ``auto``, on whichever meets the goal better on val:
more coverage at the target accuracy, or more accuracy at the target coverage (ties: max_prob).

The test split plays no part in the choice. :func:`abstention_summary` (``abstention.json``)
states both splits' risk-coverage curves and figures at the threshold, and says plainly when
test misses the target the threshold met on val — a threshold fitted on a few hundred val
images is an estimate, and its test figure is the honest one.

Example::

    section = choose_abstention(val_outcome.records, cfg.optimizer.abstain)
    program.abstention = section          # {"threshold", "confidence", "rule", "goal", "chosen_on", "val"}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmopt.config import AbstainConfig
from vlmopt.errors import VlmoptError
from vlmopt.metrics.records import PredictionRecord
from vlmopt.metrics.selective import CONFIDENCES, choose_threshold, confidence_of, risk_coverage

RULE = ("answer iff confidence >= threshold, else abstain (the top label is kept as a suggestion); confidence "
        "of the label distribution P the decision was taken on: max_prob = max_k P(k), margin = P(top1) - P(top2)")


class NothingToThreshold(VlmoptError, ValueError):
    """No val prediction carries a measured label distribution, so no threshold can be chosen."""


def goal_of(settings: AbstainConfig) -> dict[str, float]:
    """``{"target_accuracy": x}`` or ``{"coverage": y}``: the one goal the config sets."""
    if settings.target_accuracy is not None:
        return {"target_accuracy": settings.target_accuracy}
    return {"coverage": settings.coverage}


def confidences(records: Sequence[PredictionRecord], kind: str) -> list[float | None]:
    """Each record's confidence of this kind; None for a record without a measured distribution."""
    return [confidence_of(r.probabilities, kind) if r.valid and r.probabilities else None for r in records]


def correctness(records: Sequence[PredictionRecord]) -> list[bool]:
    return [r.predicted == r.gold for r in records]


def _better(choice: dict[str, Any], goal: dict[str, float]) -> tuple:
    """Sort key: meeting the goal first, then the figure the goal leaves free."""
    free = choice["coverage"] if "target_accuracy" in goal else (choice["accuracy"] or 0.0)
    return (choice["met"], free)


def choose_abstention(records: Sequence[PredictionRecord], settings: AbstainConfig) -> dict[str, Any]:
    """The abstention section (the program's and the artifact's) chosen on these (val) records.

    Raises :class:`NothingToThreshold` when no record carries a measured distribution (every val
    answer invalid, or a backend that measures none despite the config's checks).
    """
    goal = goal_of(settings)
    kinds = CONFIDENCES if settings.confidence == "auto" else (settings.confidence,)
    correct = correctness(records)
    candidates = {}
    for kind in kinds:
        values = confidences(records, kind)
        if all(v is None for v in values):
            raise NothingToThreshold(
                "optimizer.abstain: no val prediction carries a measured label distribution (all invalid, or the "
                "backend measured none), so no threshold can be chosen; check backend.label_probabilities"
            )
        candidates[kind] = choose_threshold(values, correct, **goal)
    # max() keeps the first of equals: CONFIDENCES lists max_prob first
    kind = max(kinds, key=lambda k: _better(candidates[k], goal))
    choice = candidates[kind]
    val = {key: choice[key] for key in ("n", "n_answered", "coverage", "accuracy", "met")}
    if len(kinds) > 1:
        val["candidates"] = {k: {key: c[key] for key in ("threshold", "coverage", "accuracy", "met")}
                             for k, c in candidates.items()}
    return {"threshold": choice["threshold"], "confidence": kind, "rule": RULE, "goal": goal, "chosen_on": "val",
            "val": val}


def curve(records: Sequence[PredictionRecord], kind: str) -> list[dict[str, Any]]:
    """The risk-coverage curve of a split on the chosen confidence."""
    return risk_coverage(confidences(records, kind), correctness(records))


def abstention_summary(
    section: dict[str, Any], val: Sequence[PredictionRecord], test: Sequence[PredictionRecord],
    metrics: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """``abstention.json``: the choice (the artifact's section), each split's curve and its figures at the
    threshold (``at_threshold``: coverage, accuracy on the answered and overall, intervals), and notes.

    ``metrics`` maps ``val`` / ``test`` to that split's metrics summary (its ``selective`` block).
    """
    kind, goal = section["confidence"], section["goal"]
    summary = {**section, "curves": {"val": curve(val, kind), "test": curve(test, kind)},
               "at_threshold": {split: metrics[split]["selective"] for split in ("val", "test")}}
    summary["notes"] = abstention_notes(section, metrics["test"]["selective"], goal)
    return summary


def abstention_notes(section: dict[str, Any], test: dict[str, Any], goal: dict[str, float]) -> list[str]:
    """What a reader must know: a goal val could not meet, a test figure that misses the target."""
    notes = []
    val = section["val"]
    if not val["met"]:
        reached = "abstains on every image" if "target_accuracy" in goal else "answers every measured image"
        notes.append(f"abstention: no threshold meets {_goal_text(goal)} on val; the chosen one {reached}")
    if "target_accuracy" in goal and test["accuracy_answered"] is not None and \
            test["accuracy_answered"] < goal["target_accuracy"]:
        notes.append(f"abstention: on test the accuracy on the answered is {test['accuracy_answered']:.3f}, below "
                     f"the target {goal['target_accuracy']:g} the threshold met on val (chosen on val, test untouched)")
    if "coverage" in goal and test["coverage"] < goal["coverage"]:
        notes.append(f"abstention: on test the coverage is {test['coverage']:.3f}, below the target "
                     f"{goal['coverage']:g} the threshold met on val (chosen on val, test untouched)")
    return notes


def _goal_text(goal: dict[str, float]) -> str:
    ((name, value),) = goal.items()
    return f"{name.replace('_', ' ')} {value:g}"
