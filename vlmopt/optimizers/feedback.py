"""A metric that says what went wrong on the image, for the optimizers that learn from text.

GEPA reflects on ``feedback`` and SIMBA's rule writer reads it (as the reward's extra info), so a
bare 0 teaches them little. Each prediction is scored by the task's own metric and explained in
the terms a prompt can act on:

* **wrong** — the gold and the predicted class, named as the confused pair;
* **invalid** — the answer was not a label: its raw text, and the labels it must be one of;
* **low confidence** — right, but with the measured probability of the answer below
  ``LOW_CONFIDENCE`` (only where the backend measures label probabilities);
* multi-label: the labels missed and the ones added; multi-field: each wrong field.

The metric takes GEPA's five arguments and DSPy's usual three, and returns
``dspy.Prediction(score=..., feedback=...)`` (which SIMBA also reads); the score is the plain
metric's, so the methods select on exactly what the others select on.

Example::

    metric = feedback_metric(label_accuracy, "single_label", ["cat", "dog"])
    metric(gold, pred).feedback   # "Wrong: the model answered 'dog', the image is 'cat' (confused cat -> dog)."
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy

from vlmopt.metrics.dspy_metrics import Metric
from vlmopt.programs.adapter import RAW_KEY
from vlmopt.programs.confidence import label_confidence

LOW_CONFIDENCE = 0.6
"""A right answer whose measured probability is below this is reported as unsure."""


def feedback_metric(
    metric: Metric, output_kind: str, labels: Sequence[str] | None = None, fields: Sequence[str] | None = None
):
    """``metric`` with a ``feedback`` text beside its score (see the module docstring)."""

    def with_feedback(
        gold: dspy.Example,
        pred: dspy.Prediction,
        trace: Any = None,
        pred_name: str | None = None,
        pred_trace: Any = None,
    ) -> dspy.Prediction:
        score = float(metric(gold, pred, None))  # the scoring verdict: partial credit where the metric gives it
        return dspy.Prediction(score=score, feedback=explain(gold, pred, output_kind, labels, fields))

    with_feedback.__name__ = f"{getattr(metric, '__name__', 'metric')}_with_feedback"
    return with_feedback


def explain(
    gold: dspy.Example,
    pred: dspy.Prediction,
    output_kind: str,
    labels: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
) -> str:
    """What went wrong (or right) on one image, in words a reflection model can turn into an instruction."""
    if pred is None or not pred.get("valid", True):
        raw = (pred.get(RAW_KEY) if pred is not None else None) or ""
        allowed = f" one of {list(labels)}" if labels else " in the required format"
        return (
            f"Invalid output: the model wrote {raw[:300]!r}, which is not{allowed}. "
            f"The correct answer is {_gold(gold, output_kind, fields)}. The instruction must make the model "
            "answer with exactly one of the allowed values."
        )
    if output_kind == "multi_label":
        return _multi_label(gold.get("label") or [], pred.get("label") or [])
    if output_kind == "multi_field":
        return _multi_field(gold, pred, fields or [])
    return _single_label(gold.get("label"), pred)


def _single_label(truth: str, pred: dspy.Prediction) -> str:
    answer = pred.get("label")
    _, confidence = label_confidence(pred)
    sure = "" if confidence is None else f" (measured probability {confidence:.2f})"
    if answer != truth:
        return (
            f"Wrong: the model answered {answer!r}{sure}, but the image is {truth!r} "
            f"(confused {truth} -> {answer}). The instruction should say what tells {truth!r} apart from "
            f"{answer!r}."
        )
    if confidence is not None and confidence < LOW_CONFIDENCE:
        return (
            f"Correct ({truth!r}), but with low confidence{sure}: the instruction should make what marks "
            f"{truth!r} clearer."
        )
    return f"Correct: the image is {truth!r}{sure}."


def _multi_label(gold: Sequence[str], predicted: Sequence[str]) -> str:
    missed, added = sorted(set(gold) - set(predicted)), sorted(set(predicted) - set(gold))
    if not missed and not added:
        return f"Correct: the labels are {sorted(gold)}."
    parts = [f"missed {missed}" if missed else "", f"added {added}, which do not apply" if added else ""]
    return f"Partly wrong: the model {' and '.join(p for p in parts if p)}; the labels are {sorted(gold)}."


def _multi_field(gold: dspy.Example, pred: dspy.Prediction, fields: Sequence[str]) -> str:
    wrong = [f"{f}: answered {pred.get(f)!r}, correct {gold.get(f)!r}" for f in fields if pred.get(f) != gold.get(f)]
    return f"Wrong fields: {'; '.join(wrong)}." if wrong else "Correct: every field is right."


def _gold(gold: dspy.Example, output_kind: str, fields: Sequence[str] | None) -> str:
    if output_kind == "multi_field":
        return ", ".join(f"{f}={gold.get(f)!r}" for f in fields or [])
    return repr(gold.get("label"))
