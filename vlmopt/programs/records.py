"""From a program's ``dspy.Prediction`` to the :class:`~vlmopt.metrics.records.PredictionRecord` the metrics read.

The record is a plain data contract (``vlmopt.metrics`` scores it without knowing DSPy); what a
prediction carries besides its answer — the raw text, ``valid``, the normalisation flag, the
measured label distribution — is this package's convention (see :mod:`vlmopt.programs.classify`),
so turning one into the other lives here, beside that convention. The evaluator loop builds
every record through :func:`prediction_record`; ``predict`` reads answers with :func:`answer_of`
and abstentions with :func:`abstained_of`.

Example::

    record = prediction_record(example, program(image=example.image), cfg.task)
    record.gold, record.predicted, record.confidence
"""

from __future__ import annotations

from typing import Any

import dspy

from vlmopt.config import TaskSpec
from vlmopt.datasets.images import thumbnail_uri
from vlmopt.metrics.records import PredictionRecord
from vlmopt.programs.adapter import NORMALIZED_KEY, RAW_KEY
from vlmopt.programs.confidence import label_confidence
from vlmopt.programs.decision import ABSTAINED_KEY


def gold_of(example: dspy.Example, task: TaskSpec) -> Any:
    """The example's answer in record shape (label, label list, or field -> value)."""
    if task.output == "multi_field":
        return {name: example[name] for name in task.fields or {}}
    return example.label


def answer_of(pred: dspy.Prediction, task: TaskSpec) -> Any:
    """The prediction's answer in record shape, or None when the output was invalid."""
    if not pred.get("valid", True):
        return None
    if task.output == "multi_field":
        return {name: pred[name] for name in task.fields or {}}
    return pred.label


def abstained_of(pred: dspy.Prediction) -> bool:
    """Whether the program abstained on this prediction (see :mod:`vlmopt.programs.decision`)."""
    return bool(pred.get(ABSTAINED_KEY, False))


def token_usage(pred: dspy.Prediction) -> tuple[int | None, int | None]:
    """``(prompt, completion)`` tokens DSPy tracked for this prediction, summed over its LMs."""
    usage = pred.get_lm_usage() or {}
    if not usage:
        return None, None
    prompt = sum(int(u.get("prompt_tokens") or 0) for u in usage.values())
    completion = sum(int(u.get("completion_tokens") or 0) for u in usage.values())
    return prompt, completion


def prediction_record(example: dspy.Example, pred: dspy.Prediction, task: TaskSpec) -> PredictionRecord:
    """The run-directory row of one scored example (``pred.latency_s`` set by the caller's timer)."""
    prompt_tokens, completion_tokens = token_usage(pred)
    probabilities, confidence = label_confidence(pred)
    return PredictionRecord(
        id=str(example.id),
        gold=gold_of(example, task),
        predicted=answer_of(pred, task),
        raw=pred.get(RAW_KEY) or "",
        valid=bool(pred.get("valid", True)),
        confidence=confidence,
        probabilities=probabilities,
        latency_s=float(pred.get("latency_s", 0.0)),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        label_normalized=bool(pred.get(NORMALIZED_KEY, False)),
        abstained=abstained_of(pred),
        image_ref=example.get("image_ref"),
        thumbnail=thumbnail_uri(example.image),
    )
