"""DSPy metric functions ``(example, pred, trace=None)`` that the optimizer maximises.

Field conventions (the names the classification signatures use):

- single_label: ``example["label"]`` vs ``pred["label"]``
- multi_label: ``example["label"]`` vs ``pred["label"]`` (lists, compared as sets; the field is named
  ``label`` because ``Example.labels()`` is a DSPy method). Read it
  with item access or ``.get``: ``example.labels`` is ``dspy.Example.labels()``, a method.
- multi_field: one output field per task field, ``example[field]`` vs ``pred[field]``; the
  field names are passed to the factory because an example may carry other non-input keys.

The ``trace`` argument follows DSPy's protocol: ``None`` while *scoring* (Evaluate, MIPROv2's
trials), where a float is averaged, and a trace list while *bootstrapping demos*, where DSPy
keeps a demo when the result is truthy. Partial-credit metrics therefore return a bool during
bootstrapping (the whole answer right), so a half-right answer never becomes a few-shot demo.

A missing or ``None`` prediction field (an invalid output) scores as wrong; values are compared
exactly, never normalised, to match how the reports count them.

Example::

    metric = metric_for("multi_field", fields=["make", "year"])
    dspy.Evaluate(devset=val, metric=metric)(program)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dspy

from vlmopt.metrics.multilabel import hamming_score

Metric = Callable[[dspy.Example, dspy.Prediction, Any], float | bool]


def label_accuracy(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> bool:
    """Single label: True when ``pred.label == example.label`` (bool in both DSPy modes)."""
    predicted = pred.get("label")
    return predicted is not None and predicted == example.get("label")


def _label_sets(example: dspy.Example, pred: dspy.Prediction) -> tuple[list[str], list[str] | None]:
    return list(example.get("label") or ()), pred.get("label")


def multilabel_exact(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> bool:
    """Multi label: True when the predicted label set equals the gold set."""
    gold, predicted = _label_sets(example, pred)
    return predicted is not None and set(gold) == set(predicted)


def multilabel_hamming(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> float | bool:
    """Multi label: ``|gold ∩ pred| / |gold ∪ pred|`` while scoring; exact match while bootstrapping."""
    if trace is not None:
        return multilabel_exact(example, pred)
    gold, predicted = _label_sets(example, pred)
    return hamming_score(gold, predicted)


def _field_hits(fields: Sequence[str], example: dspy.Example, pred: dspy.Prediction) -> list[bool]:
    return [pred.get(f) is not None and pred.get(f) == example.get(f) for f in fields]


def _check_fields(fields: Sequence[str] | None) -> list[str]:
    if not fields:
        raise ValueError("multi_field metrics need the field names (fields=[...])")
    return list(fields)


def multifield_exact(fields: Sequence[str]) -> Metric:
    """Factory: a metric that is True when every one of ``fields`` matches gold."""
    names = _check_fields(fields)

    # Named like the factory: DSPy's result tables show the metric's __name__.
    def multifield_exact(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> bool:
        return all(_field_hits(names, example, pred))

    return multifield_exact


def multifield_mean(fields: Sequence[str]) -> Metric:
    """Factory: fraction of ``fields`` that match while scoring; all-fields-match while bootstrapping."""
    names = _check_fields(fields)

    # Named like the factory: DSPy's result tables show the metric's __name__.
    def multifield_mean(example: dspy.Example, pred: dspy.Prediction, trace: Any = None) -> float | bool:
        hits = _field_hits(names, example, pred)
        return all(hits) if trace is not None else sum(hits) / len(hits)

    return multifield_mean


def metric_for(output_kind: str, *, fields: Sequence[str] | None = None, partial_credit: bool = True) -> Metric:
    """The optimizer metric for an output kind.

    ``partial_credit`` (multi_label, multi_field) picks Hamming / per-field mean, a smoother
    signal on a small val set, over exact match; single_label has no partial credit.
    ``fields`` is required for multi_field.
    """
    if output_kind == "single_label":
        return label_accuracy
    if output_kind == "multi_label":
        return multilabel_hamming if partial_credit else multilabel_exact
    if output_kind == "multi_field":
        return multifield_mean(fields) if partial_credit else multifield_exact(fields)
    raise ValueError(
        f"unknown output_kind {output_kind!r}; expected one of ['single_label', 'multi_label', 'multi_field']"
    )
