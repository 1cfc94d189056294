"""Signature factory: a task config becomes a typed DSPy signature.

The output type *is* the classifier's contract: ``Literal[...]`` for one label,
``list[Literal[...]]`` for several (still named ``label``), one ``Literal`` field per name for multi-field extraction.
DSPy turns these into the JSON schema that the backends enforce while decoding.

Example::

    sig = make_signature(cfg.task)                 # labels from the config
    sig.output_fields["label"].annotation          # Literal['cat', 'dog']
"""

from __future__ import annotations

from typing import Literal

import dspy

from vlmopt.config import TaskSpec

DEFAULT_INSTRUCTIONS = {
    "single_label": "Classify the image into exactly one of the allowed labels.",
    "multi_label": "List every allowed label that applies to the image.",
    "multi_field": "Describe the image by choosing one allowed value for each field.",
}
DEFAULT_IMAGE_DESC = "The image to classify."


def label_type(labels: list[str]) -> object:
    """``Literal[*labels]`` built at run time (the class set comes from data)."""
    return Literal[tuple(labels)]


def output_fields(task: TaskSpec, labels: list[str] | None = None) -> dict[str, tuple[object, dspy.OutputField]]:
    """The typed output fields of a task; ``labels`` overrides ``task.labels`` (e.g. detected ones)."""
    if task.output == "multi_field":
        return {name: (label_type(values), dspy.OutputField()) for name, values in (task.fields or {}).items()}
    labels = labels or task.labels
    if not labels:
        raise ValueError("the task has no labels: set task.labels or dataset.label_mapping")
    if task.output == "multi_label":
        # Named "label" too, not "labels": dspy.Example.labels() is a method that Evaluate and the
        # optimizers call, and a field of that name would shadow it.
        return {"label": (list[label_type(labels)], dspy.OutputField())}
    if task.other_label:  # the closed set's "none of these": the model must be told what it means
        return {"label": (label_type(labels), dspy.OutputField(desc=other_label_hint(task.other_label)))}
    return {"label": (label_type(labels), dspy.OutputField())}


def other_label_hint(other_label: str) -> str:
    return f"Answer {other_label!r} when the image shows none of the other labels."


def make_signature(task: TaskSpec, labels: list[str] | None = None) -> type[dspy.Signature]:
    """Image in, typed answer out; the system prompt is the instruction MIPROv2 rewrites."""
    fields: dict[str, tuple[object, object]] = {
        "image": (dspy.Image, dspy.InputField(desc=(task.user_prompt or DEFAULT_IMAGE_DESC).strip())),
        **output_fields(task, labels),
    }
    instructions = (task.system_prompt or DEFAULT_INSTRUCTIONS[task.output]).strip()
    if task.other_label and not task.system_prompt:
        instructions = f"{instructions} {other_label_hint(task.other_label)}"
    return dspy.Signature(fields, instructions)


def answer_fields(signature: type[dspy.Signature]) -> list[str]:
    """The output fields that carry the answer (everything but an optional ``reasoning``)."""
    return [name for name in signature.output_fields if name != "reasoning"]
