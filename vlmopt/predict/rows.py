"""One image in, one row (or one failure) out: the per-image code and the row schema of every predict runner.

The single-machine stream (:mod:`vlmopt.predict.stream`) and a cluster runner call
:func:`predict_image` per image and write what it returns, so their outputs agree row for row:

* a **row** — ``id, label, confidence, valid, raw, abstained, top_labels`` (:data:`COLUMNS`), the
  answer read from the prediction exactly as ``evaluate`` reads it
  (:func:`~vlmopt.programs.records.answer_of`, :func:`~vlmopt.programs.records.abstained_of`,
  :func:`~vlmopt.programs.confidence.label_confidence`). The frozen program applies its own
  decision rule inside ``forward`` (calibration weights, the abstention threshold), so calling it
  is applying it: ``abstained`` is True when it was not sure enough (``label`` is then its top
  label, a suggestion), ``top_labels`` the three most likely labels with their probabilities
  (None where the backend measured no distribution);
* a :class:`Failure` — an unreadable file (stage ``read``, the loader's reason code: ``corrupt``,
  ``truncated``, ``missing`` ...) or a call that raised or returned nothing (stage ``predict``),
  with the message. Never an exception: one bad image must not end a night's run.

:func:`row_schema` is the typed Arrow schema of the rows for a task, so every Parquet part (or
shard) of one output has the same column types even when a part holds only invalid answers.

Example::

    with dspy.context(lm=lm):
        outcome = predict_image(frozen.program, frozen.task, Item("a.jpg", "a.jpg"), max_side=768)
    outcome.id, (outcome.reason if isinstance(outcome, Failure) else outcome["label"])
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import dspy
import pyarrow as pa

from vlmopt.config import TaskSpec
from vlmopt.datasets.images import BadImage, load_image, to_dspy_image
from vlmopt.predict.inputs import Item
from vlmopt.programs.adapter import RAW_KEY
from vlmopt.programs.confidence import label_confidence, top_labels
from vlmopt.programs.records import abstained_of, answer_of

COLUMNS = ["id", "label", "confidence", "valid", "raw", "abstained", "top_labels"]
"""The columns of a predict row, in order (JSONL keys, CSV header, Parquet schema)."""
INVALID = "(invalid)"
"""How a row without an answer (``valid`` false) is counted in the summary's label counts."""


@dataclass(frozen=True)
class Failure:
    """An image that got no row: ``stage`` ``read`` (unreadable file) or ``predict`` (the call failed)."""

    id: str
    stage: str
    reason: str  # a short code: the loader's (corrupt, missing ...), call_failed or no_prediction
    message: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)


Outcome = dict[str, Any] | Failure


def predict_image(
    program: dspy.Module, task: TaskSpec, item: Item, *, max_side: int, max_pixels: int | None = None
) -> Outcome:
    """Decode, downscale and re-encode the image as ``evaluate``'s loader does, run the program, make its row.

    The LM is the caller's ``dspy.context``; the decoded image lives only during this call.
    """
    try:
        image = to_dspy_image(load_image(item.source, max_side=max_side, max_pixels=max_pixels))
    except BadImage as bad:
        return Failure(item.id, "read", bad.reason, str(bad))
    try:
        pred = program(image=image)
    except Exception as exc:  # noqa: BLE001 - a failed call is this image's failure row, the run goes on
        return Failure(item.id, "predict", "call_failed", f"{type(exc).__name__}: {exc}")
    return outcome_of(item.id, pred, task)


def outcome_of(item_id: str, pred: dspy.Prediction | None, task: TaskSpec) -> Outcome:
    """The row of one prediction; ``None`` (what ``program.batch`` returns for a failed call) is a failure."""
    if pred is None:
        return Failure(item_id, "predict", "no_prediction", "the program returned no prediction (a failed call)")
    probabilities, confidence = label_confidence(pred)
    return {
        "id": item_id,
        "label": answer_of(pred, task),
        "confidence": confidence,
        "valid": bool(pred.get("valid", True)),
        "raw": pred.get(RAW_KEY) or "",
        "abstained": abstained_of(pred),
        "top_labels": top_labels(probabilities),
    }


def answer_text(label: Any) -> Any:
    """A CSV cell is text: a list (multi-label) or dict (multi-field) answer is written as JSON."""
    return json.dumps(label, ensure_ascii=False) if isinstance(label, list | dict) else label


def label_key(label: Any) -> str:
    """What the summary counts a row's answer as: the label, the answer as JSON text, or :data:`INVALID`."""
    if label is None or label == "":
        return INVALID
    return str(answer_text(label))


def row_schema(task: TaskSpec) -> pa.Schema:
    """The Arrow schema of a task's rows: the label is a string, a list of strings or a struct of fields."""
    if task.output == "multi_label":
        label = pa.list_(pa.string())
    elif task.output == "multi_field":
        label = pa.struct([(name, pa.string()) for name in task.fields or {}])
    else:
        label = pa.string()
    top = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))
    return pa.schema([("id", pa.string()), ("label", label), ("confidence", pa.float64()),
                      ("valid", pa.bool_()), ("raw", pa.string()), ("abstained", pa.bool_()), ("top_labels", top)])
