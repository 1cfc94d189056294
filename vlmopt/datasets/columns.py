"""Find the image, label and id columns of a table, from the config or from the features.

Detection rules (the config's ``image_column`` / ``label_column`` / ``id_column`` win):

* image: the column with an ``Image`` feature; for manifests, the string column whose values
  are file names with an image extension;
* label (single_label): the ``ClassLabel`` column, else the one string column left;
* label (multi_label): the list column (of ``ClassLabel`` or strings), else the one string
  column left (then a cell holds labels separated by ``|``);
* fields (multi_field): one column per field, named as in ``task.fields``;
* id: none by default (the loader then uses the file path, or the row index).

A named column that is missing, or a choice that is ambiguous, is an error listing the columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets
from PIL import Image

from vlmopt.config import DatasetConfig, TaskSpec
from vlmopt.datasets.errors import DatasetError

IMAGE_SUFFIXES = frozenset(Image.registered_extensions())
"""File name endings PIL opens: what a manifest's image paths and an image folder's files end in."""
RESERVED_KEYS = ("image", "id", "label")


@dataclass(frozen=True)
class Columns:
    """The columns the loader reads: ``targets`` is the label column or the field columns."""

    image: str
    targets: tuple[str, ...]
    id: str | None
    image_is_path: bool  # a manifest's string column of file paths rather than an Image feature


def detect_columns(dataset: datasets.Dataset, cfg: DatasetConfig, task: TaskSpec, *, source: str) -> Columns:
    """Resolve every column the task needs, or raise a ``DatasetError`` naming what to set."""
    features = dataset.features
    available = list(features)
    for key, name in (
        ("image_column", cfg.image_column),
        ("label_column", cfg.label_column),
        ("id_column", cfg.id_column),
    ):
        if name is not None and name not in features:
            raise DatasetError(f"{source}: dataset.{key} {name!r} not found; available columns: {available}")

    image = cfg.image_column or _detect_image(dataset, source)
    image_is_path = not _is_image_feature(features[image])
    if image_is_path and not _is_string(features[image]):
        raise DatasetError(f"{source}: image column {image!r} holds {features[image]}, not images or file paths")

    taken = {image, cfg.id_column}
    if task.output == "multi_field":
        fields = tuple(task.fields or {})
        clash = [f for f in fields if f in RESERVED_KEYS]
        if clash:
            raise DatasetError(f"task.fields {clash} clash with the example keys {list(RESERVED_KEYS)}; rename them")
        missing = [f for f in fields if f not in features]
        if missing:
            raise DatasetError(f"{source}: task.fields {missing} have no column; available columns: {available}")
        targets = fields
    elif cfg.label_column is not None:
        targets = (cfg.label_column,)
    elif task.output == "multi_label":
        targets = (_detect_multi_label(features, taken, source),)
    else:
        targets = (_detect_label(features, taken, source),)
    return Columns(image=image, targets=targets, id=cfg.id_column, image_is_path=image_is_path)


def _is_image_feature(feature: object) -> bool:
    # A stream without declared features comes back as a plain {bytes, path} struct.
    return isinstance(feature, datasets.Image) or (isinstance(feature, dict) and set(feature) == {"bytes", "path"})


def _is_string(feature: object) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _is_list(feature: object) -> bool:
    return isinstance(feature, (datasets.List, datasets.LargeList, list))


def _detect_image(dataset: datasets.Dataset, source: str) -> str:
    features = dataset.features
    found = [name for name, f in features.items() if _is_image_feature(f)]
    if not found:
        first = dataset[0] if len(dataset) else {}
        found = [
            name
            for name, f in features.items()
            if _is_string(f) and isinstance(first.get(name), str) and _has_image_suffix(first[name])
        ]
    return _exactly_one(found, "image", list(features), source)


def _has_image_suffix(value: str) -> bool:
    dot = value.rfind(".")
    return dot != -1 and value[dot:].lower() in IMAGE_SUFFIXES


def _detect_label(features: datasets.Features, taken: set, source: str) -> str:
    found = [name for name, f in features.items() if name not in taken and isinstance(f, datasets.ClassLabel)]
    if not found:
        found = [name for name, f in features.items() if name not in taken and _is_string(f)]
    return _exactly_one(found, "label", list(features), source)


def _detect_multi_label(features: datasets.Features, taken: set, source: str) -> str:
    found = [name for name, f in features.items() if name not in taken and _is_list(f)]
    if not found:
        found = [name for name, f in features.items() if name not in taken and _is_string(f)]
    return _exactly_one(found, "label", list(features), source)


def _exactly_one(found: list[str], what: str, available: list[str], source: str) -> str:
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{source}: no {what} column found; set dataset.{what}_column. Available columns: {available}"
        )
    raise DatasetError(f"{source}: several candidate {what} columns {found}; set dataset.{what}_column")
