"""Multi-field metrics: exact match over all fields, and per-field single-label metrics.

A multi-field answer is ``{field: value}`` with a closed value set per field (e.g. car make,
model, year). Each field is scored as its own single-label problem, with its own confusion
matrix and ``invalid`` column. An invalid output (``None``) is invalid in every field; a valid
answer that lacks a field is invalid in that field only (counted, not guessed).

Example::

    fields = {"make": ["audi", "bmw"], "year": ["2011", "2012"]}
    m = multifield_metrics([{"make": "audi", "year": "2012"}],
                           [{"make": "audi", "year": "2011"}], fields)
    m["exact_match"]                      # 0.0
    m["per_field"]["make"]["accuracy"]    # 1.0
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vlmopt.metrics.classification import item_name, single_label_metrics


def field_value(answer: Mapping[str, str] | None, field: str) -> str | None:
    """The answer's value for ``field``; None when the output is invalid or lacks the field."""
    return None if answer is None else answer.get(field)


def fields_correct(
    gold: Mapping[str, str], predicted: Mapping[str, str] | None, fields: Sequence[str]
) -> list[bool]:
    """Per field, whether the prediction equals gold (invalid / missing = wrong)."""
    return [field_value(predicted, f) == gold[f] for f in fields]


def multifield_metrics(
    gold: Sequence[Mapping[str, str]],
    predicted: Sequence[Mapping[str, str] | None],
    fields: Mapping[str, Sequence[str]],
    *,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Exact match, mean per-field accuracy, invalid rate and ``per_field`` single-label metrics.

    ``per_field[name]`` holds that field's accuracy, invalid_rate, macro_f1, per_class and
    confusion exactly as :func:`~vlmopt.metrics.classification.single_label_metrics` returns.
    A gold answer missing a field is a ValueError (the dataset is wrong, not the model); errors
    name the example by ``ids`` when given.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold answers but {len(predicted)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    if not fields:
        raise ValueError("fields is empty")
    names = list(fields)
    for position, g in enumerate(gold):
        missing = [f for f in names if f not in g]
        if missing:
            raise ValueError(f"{item_name(position, ids)}: gold answer lacks fields {missing}")
    per_field = {
        name: single_label_metrics(
            [g[name] for g in gold], [field_value(p, name) for p in predicted], list(fields[name]), ids=ids
        )
        for name in names
    }
    n = len(gold)
    exact = sum(all(fields_correct(g, p, names)) for g, p in zip(gold, predicted, strict=True))
    n_invalid = sum(p is None for p in predicted)
    return {
        "n": n,
        "n_invalid": n_invalid,
        "invalid_rate": n_invalid / n,
        "exact_match": exact / n,
        "field_accuracy": sum(s["accuracy"] for s in per_field.values()) / len(names),
        "per_field": per_field,
    }
