"""``load_splits``: one call from a task config to train / val / test lists of ``dspy.Example``.

The order of work keeps memory to one decoded image at a time:

1. open the source with images undecoded (``sources``) and find its columns (``columns``);
2. read ids and labels only; items whose label cannot be used become counted skips (``labels``);
3. draw the seeded, stratified ``n_samples`` sample, if one is asked for (``splits``);
4. decode, normalise and encode each chosen image once (``images``); a bad one is a counted skip;
5. split the usable items once, stratified and seeded, and fingerprint the ids of each split.

Splitting after decoding means a bad image never leaves a split short of its share.

Example::

    data = load_splits(load_config("configs/mars_landforms.yaml"))
    data.train[0].image, data.train[0].label      # dspy.Image, "crater"
    data.sizes(), data.skip_counts()              # {"train": 60, ...}, {"corrupt": 1}
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy

from vlmopt.config import TaskConfig
from vlmopt.datasets.columns import Columns, detect_columns
from vlmopt.datasets.errors import DatasetError, TooFewClasses
from vlmopt.datasets.images import BadImage, load_image, to_dspy_image
from vlmopt.datasets.labels import LabelSkip, TargetReader, order_labels, strata
from vlmopt.datasets.sources import OpenedSource, open_source
from vlmopt.datasets.splits import fingerprint, stratified_sample, stratified_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skip:
    """One item left out, and why: ``reason`` is a short code, ``message`` names the item."""

    id: str
    path: str | None
    reason: str
    message: str


@dataclass
class LoadedSplits:
    """The held-out protocol's three splits plus what a report needs to describe them."""

    train: list[dspy.Example]
    val: list[dspy.Example]
    test: list[dspy.Example]
    labels: list[str]  # class names (single_label, multi_label); empty for multi_field
    fields: dict[str, list[str]] | None  # multi_field: field -> closed set of values
    fingerprint: str  # sha256 over the ordered ids of each split
    skipped: list[Skip] = field(default_factory=list)
    source: str = ""
    kind: str = ""
    columns: Columns | None = None

    @property
    def all(self) -> list[dspy.Example]:
        """Every usable example, train then val then test."""
        return [*self.train, *self.val, *self.test]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def skip_counts(self) -> dict[str, int]:
        return dict(Counter(skip.reason for skip in self.skipped))


@dataclass
class _Item:
    position: int
    id: str
    path: str | None
    target: dict[str, Any]


def load_splits(cfg: TaskConfig, *, max_pixels: int | None = None) -> LoadedSplits:
    """Load, clean, sample and split the dataset of ``cfg``.

    ``max_pixels`` is the decompression-bomb guard (default ``dataset.max_image_pixels``, else
    PIL's ``Image.MAX_IMAGE_PIXELS``).
    Raises ``DatasetError`` (or its ``HubUnreachable`` / ``SplitError`` / ``TooFewClasses``) for a
    problem with the whole dataset; a problem with one item is a ``Skip`` in the result instead.
    """
    dcfg = cfg.dataset
    opened = open_source(dcfg, seed=cfg.seed)
    table = opened.dataset
    columns = detect_columns(table, dcfg, cfg.task, source=dcfg.source)
    reader = TargetReader.build(table.features, columns, dcfg, cfg.task)

    skipped: list[Skip] = []
    items = _read_items(opened, columns, reader, skipped)
    classes = reader.class_names([item.target for item in items])
    if cfg.task.output == "single_label" and len(classes) < 2:
        raise TooFewClasses(classes, dcfg.source)
    if cfg.task.output == "multi_label":
        order_labels([item.target for item in items], classes)
    if dcfg.n_samples is not None:
        keys = strata([item.target for item in items], cfg.task.output, classes)
        items = [items[i] for i in stratified_sample(keys, dcfg.n_samples, cfg.seed)]

    max_pixels = max_pixels or dcfg.max_image_pixels
    examples = _decode(opened, columns, items, dcfg.max_image_side, max_pixels, skipped)
    usable = [item for item in items if item.id in examples]
    keys = strata([item.target for item in usable], cfg.task.output, classes)
    required = classes if cfg.task.output == "single_label" else ()
    parts = stratified_split(keys, dcfg.splits.model_dump(), cfg.seed, required=required)
    split_ids = {name: [usable[i].id for i in positions] for name, positions in parts.items()}
    for skip in skipped:
        log.warning("skipped %s: %s", skip.id, skip.message)
    return LoadedSplits(
        train=[examples[i] for i in split_ids["train"]],
        val=[examples[i] for i in split_ids["val"]],
        test=[examples[i] for i in split_ids["test"]],
        labels=classes,
        fields=dict(cfg.task.fields) if cfg.task.fields else None,
        fingerprint=fingerprint(split_ids),
        skipped=skipped,
        source=dcfg.source,
        kind=opened.kind,
        columns=columns,
    )


def _read_items(opened: OpenedSource, columns: Columns, reader: TargetReader, skipped: list[Skip]) -> list[_Item]:
    """Ids, paths and targets of every row, without reading image bytes."""
    wanted = [*columns.targets]
    if columns.id is not None:
        wanted.append(columns.id)
    path_ids = columns.id is None and opened.kind in ("imagefolder", "manifest")
    if path_ids or columns.image_is_path:
        wanted.append(columns.image)
    rows = opened.dataset.select_columns(list(dict.fromkeys(wanted))).to_dict()
    n = len(opened.dataset)
    items: list[_Item] = []
    seen: dict[str, int] = {}
    for position in range(n):
        row = {name: values[position] for name, values in rows.items()}
        path = _path_of(row.get(columns.image), opened) if columns.image in row else None
        if columns.id is not None:
            item_id = str(row[columns.id])
        elif path_ids and path is not None:
            item_id = _relative(path, opened.base_dir)
        else:
            item_id = str(position)
        if item_id in seen:
            raise DatasetError(
                f"id {item_id!r} appears twice (rows {seen[item_id]} and {position}); ids must be unique"
            )
        seen[item_id] = position
        try:
            target = reader.read(row, f"item {item_id!r}")
        except LabelSkip as skip:
            skipped.append(Skip(item_id, path, skip.reason, str(skip)))
            continue
        items.append(_Item(position, item_id, path, target))
    return items


def _decode(
    opened: OpenedSource,
    columns: Columns,
    items: list[_Item],
    max_side: int,
    max_pixels: int | None,
    skipped: list[Skip],
) -> dict[str, dspy.Example]:
    """Decode each chosen image once, in table order; bad images become skips."""
    table = opened.dataset.select_columns([columns.image]).select([item.position for item in items])
    examples: dict[str, dspy.Example] = {}
    for item, row in zip(items, table, strict=True):
        payload = row[columns.image]
        try:
            source = _image_source(payload, opened, item)
            image = to_dspy_image(load_image(source, max_side=max_side, max_pixels=max_pixels))
        except BadImage as bad:
            skipped.append(Skip(item.id, item.path, bad.reason, f"item {item.id!r}: {bad.detail}"))
            continue
        examples[item.id] = dspy.Example(
            image=image, **item.target, id=item.id, image_ref=item.path or item.id
        ).with_inputs("image")
    return examples


def _image_source(payload: Any, opened: OpenedSource, item: _Item) -> bytes | str:
    if isinstance(payload, dict) and payload.get("bytes"):
        return payload["bytes"]
    path = _path_of(payload, opened)
    if path is None:
        raise BadImage("missing", "the row has no image")
    return path


def _path_of(payload: Any, opened: OpenedSource) -> str | None:
    """The file an image cell points at (manifest paths are relative to the manifest)."""
    value = payload.get("path") if isinstance(payload, dict) else payload
    if not isinstance(value, str) or not value:
        return None
    if opened.kind == "manifest" and opened.base_dir is not None and not Path(value).is_absolute():
        return str(opened.base_dir / value)
    return value


def _relative(path: str, base: Path | None) -> str:
    if base is None:
        return path
    try:
        return Path(path).relative_to(base).as_posix()
    except ValueError:
        return path
