"""Turn raw label values into the targets an example holds, and resolve the class names.

* single_label: ``{"label": "cat"}``; multi_label: ``{"label": ["cat", "outdoor"]}`` (a list,
  under ``label`` too: ``dspy.Example.labels()`` is a method a ``labels`` key would shadow, and
  the signatures and metrics use ``label``); multi_field: ``{"age_group": "adult", ...}``.
* ``label_mapping`` (raw value -> class name) is looked up by the raw value, its string form,
  its integer form (a ``"0"`` read from JSON) and, for a ``ClassLabel``, the class's name.
* A raw value the mapping lacks, a class outside ``task.labels``, a field value outside the
  field's closed set, or an empty label is a **counted skip** naming the value and the item,
  not an error: mapping only some classes is how a task uses a subset of a dataset's classes,
  and the report shows how many items each reason dropped.
* Class names: ``task.labels`` when given (``label_mapping`` fills it), else the ``ClassLabel``
  names, else the sorted distinct values; ``task.other_label`` is added last.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from vlmopt.config import DatasetConfig, TaskSpec, with_other_label
from vlmopt.datasets.columns import Columns

MULTI_LABEL_SEPARATOR = "|"
NO_LABEL = "(no label)"


class LabelSkip(Exception):
    """One item whose label cannot be used; ``reason`` is the short code skips are counted by."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class TargetReader:
    """Reads the target columns of one row into the example's target keys."""

    output: str
    columns: Columns
    features: datasets.Features
    mapping: dict[int | str, str] | None
    labels: tuple[str, ...] | None
    fields: dict[str, list[str]] | None
    other_label: str | None = None

    @classmethod
    def build(
        cls, features: datasets.Features, columns: Columns, dataset: DatasetConfig, task: TaskSpec
    ) -> TargetReader:
        labels = tuple(task.labels) if task.labels is not None else None
        return cls(task.output, columns, features, dataset.label_mapping, labels, task.fields, task.other_label)

    def read(self, row: dict[str, Any], item: str) -> dict[str, Any]:
        """The target keys of ``row``; raises ``LabelSkip`` when the item cannot be used."""
        if self.output == "multi_field":
            return {name: self._field_value(name, row.get(name), item) for name in self.columns.targets}
        column = self.columns.targets[0]
        raw, feature = row.get(column), self.features[column]
        if self.output == "single_label":
            return {"label": self._class_of(raw, feature, item)}
        if isinstance(raw, str):
            raw = [part.strip() for part in raw.split(MULTI_LABEL_SEPARATOR) if part.strip()]
        if not isinstance(raw, list):
            raise LabelSkip("missing_label", f"{item}: labels {raw!r} are not a list")
        inner = getattr(feature, "feature", feature)
        return {"label": list(dict.fromkeys(self._class_of(value, inner, item) for value in raw))}

    def class_names(self, targets: Sequence[dict[str, Any]]) -> list[str]:
        """The resolved class names (empty for multi_field, whose values come from task.fields).

        ``task.other_label`` is one of them (last) even when no item is labelled with it.
        """
        if self.output == "multi_field":
            return []
        if self.labels is not None:
            return list(self.labels)
        return with_other_label(self._data_class_names(targets), self.other_label)

    def _data_class_names(self, targets: Sequence[dict[str, Any]]) -> list[str]:
        feature = self.features[self.columns.targets[0]]
        feature = getattr(feature, "feature", feature) if self.output == "multi_label" else feature
        if isinstance(feature, datasets.ClassLabel) and self.mapping is None:
            return list(feature.names)
        if self.output == "single_label":
            return sorted({t["label"] for t in targets})
        return sorted({label for t in targets for label in t["label"]})

    def _class_of(self, raw: Any, feature: Any, item: str) -> str:
        if raw is None or raw == "":
            raise LabelSkip("missing_label", f"{item}: has no label")
        name = _class_label_name(feature, raw, item)
        if self.mapping is None:
            cls = name if name is not None else str(raw)
        else:
            found = next((self.mapping[k] for k in _keys(raw, name) if k in self.mapping), None)
            if found is None:
                named = f" ({name})" if name is not None else ""
                raise LabelSkip(
                    "label_not_in_mapping",
                    f"{item}: label {raw!r}{named} is not in dataset.label_mapping (keys {list(self.mapping)})",
                )
            cls = found
        if self.labels is not None and cls not in self.labels:
            raise LabelSkip(
                "label_not_in_labels", f"{item}: label {cls!r} is not one of task.labels {list(self.labels)}"
            )
        return cls

    def _field_value(self, name: str, raw: Any, item: str) -> str:
        if raw is None or raw == "":
            raise LabelSkip("missing_label", f"{item}: field {name!r} is empty")
        value = _class_label_name(self.features[name], raw, item) or str(raw)
        allowed = (self.fields or {})[name]
        if value not in allowed:
            raise LabelSkip("value_not_in_field", f"{item}: field {name!r} = {value!r} is not one of {allowed}")
        return value


def _class_label_name(feature: Any, raw: Any, item: str) -> str | None:
    """The ClassLabel name of an integer value; -1 (how hub test splits mark "unlabelled") skips."""
    if not isinstance(feature, datasets.ClassLabel) or not isinstance(raw, int):
        return None
    if not 0 <= raw < feature.num_classes:
        raise LabelSkip("missing_label", f"{item}: label {raw} is outside the {feature.num_classes} ClassLabel classes")
    return feature.int2str(raw)


def _keys(raw: Any, name: str | None) -> list[Any]:
    keys: list[Any] = [raw, str(raw)]
    if isinstance(raw, str) and raw.lstrip("-").isdigit():
        keys.append(int(raw))
    if name is not None:
        keys.append(name)
    return keys


def order_labels(targets: list[dict[str, Any]], classes: Sequence[str]) -> None:
    """Put each multi-label list in class order, so equal label sets compare equal."""
    rank = {name: i for i, name in enumerate(classes)}
    for target in targets:
        target["label"] = sorted(target["label"], key=lambda label: rank.get(label, len(rank)))


def strata(targets: Sequence[dict[str, Any]], output: str, classes: Sequence[str]) -> list[str]:
    """The key each item is stratified by.

    single_label: its class. multi_field: the value of the first field. multi_label: its
    rarest label (ties in class order), the usual way to keep rare labels in every split.
    """
    if output == "single_label":
        return [t["label"] for t in targets]
    if output == "multi_field":
        first = next(iter(targets[0])) if targets else None
        return [t[first] for t in targets]
    counts = Counter(label for t in targets for label in t["label"])
    rank = {name: i for i, name in enumerate(classes)}
    return [
        min(t["label"], key=lambda lab: (counts[lab], rank.get(lab, 0))) if t["label"] else NO_LABEL for t in targets
    ]
