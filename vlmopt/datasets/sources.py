"""Open a dataset source as a ``datasets.Dataset`` whose images are left undecoded.

Four kinds of source, all through the ``datasets`` library so its caching and formats apply:

* ``hub``: a Hugging Face hub id (``owner/name``), streamed when only ``n_samples`` are wanted;
* ``imagefolder``: a local ``<class_name>/*.jpg`` tree (datasets' ``imagefolder`` builder);
* ``manifest``: a CSV / JSONL / Parquet file with image paths relative to it plus label columns;
* ``saved``: a directory written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``).

Images stay undecoded here (``Image(decode=False)``: bytes and/or a path) so that reading labels,
sampling and splitting never touch pixels; the loader decodes each chosen image exactly once.

When the hub cannot be reached the error says so at once and names the local alternatives: a
dataset silently replaced by something else would make every later number meaningless.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import datasets
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from vlmopt.config import DatasetConfig
from vlmopt.datasets.columns import IMAGE_SUFFIXES
from vlmopt.datasets.errors import DatasetError, HubUnreachable, TooFewClasses

MANIFEST_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# How long the reachability probe waits: the library's own retries take ~25 s to give up.
HUB_PROBE_TIMEOUT_S = 5.0
# A stream has no length, so a stratified sample of n is drawn from the first
# STREAM_POOL_FACTOR * n items of a seeded shuffle of the stream rather than from all of it.
STREAM_POOL_FACTOR = 4
STREAM_SHUFFLE_BUFFER = 1000


@dataclass(frozen=True)
class OpenedSource:
    """A source ready for column detection: the table, its kind, and where relative paths start."""

    dataset: datasets.Dataset
    kind: str
    base_dir: Path | None  # manifests: image paths are relative to this; imagefolder: ids are


def resolve_kind(cfg: DatasetConfig) -> str:
    """The source kind: ``cfg.kind`` when given, else detected from what ``cfg.source`` names."""
    if cfg.kind != "auto":
        return cfg.kind
    path = Path(cfg.source).expanduser()
    if path.is_file():
        if path.suffix.lower() in MANIFEST_BUILDERS:
            return "manifest"
        raise DatasetError(
            f"dataset.source {cfg.source!r} is a file but not a manifest; use one of {sorted(MANIFEST_BUILDERS)}"
        )
    if path.is_dir():
        return "saved" if _is_saved_dir(path) else "imagefolder"
    if HUB_ID.match(cfg.source):
        return "hub"
    raise DatasetError(f"dataset.source {cfg.source!r}: no such file or folder, and not a hub id (owner/name)")


def open_source(cfg: DatasetConfig, *, seed: int = 0) -> OpenedSource:
    """Open ``cfg.source`` with images undecoded; ``seed`` orders a streamed sample."""
    kind = resolve_kind(cfg)
    if kind == "hub":
        return OpenedSource(_open_hub(cfg, seed), kind, None)
    path = Path(cfg.source).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset.source {cfg.source!r} (kind {kind}) does not exist")
    if kind == "imagefolder":
        if not path.is_dir():
            raise DatasetError(f"dataset.source {cfg.source!r} (kind imagefolder) is not a folder")
        if next(_folder_images(path), None) is None:
            raise DatasetError(
                f"image folder {cfg.source!r} holds no image files (.jpg, .jpeg, .png, .webp, .bmp, .gif, .tiff "
                "or another format PIL reads): put each class's images in a <class_name>/ subfolder"
            )
        dataset = datasets.load_dataset("imagefolder", data_dir=str(path), split=cfg.split)
        if set(dataset.features) == {"image"}:  # datasets found no metadata file and did not infer labels
            _check_class_folders(path, cfg.source)
        return OpenedSource(_undecoded(dataset), kind, path.resolve())
    if kind == "manifest":
        builder = MANIFEST_BUILDERS.get(path.suffix.lower())
        if builder is None or not path.is_file():
            raise DatasetError(f"dataset.source {cfg.source!r} is not a manifest file ({sorted(MANIFEST_BUILDERS)})")
        dataset = datasets.load_dataset(builder, data_files={"train": str(path)}, split="train")
        return OpenedSource(dataset, kind, path.resolve().parent)
    return OpenedSource(_undecoded(_open_saved(path, cfg.split)), kind, None)


def _folder_images(path: Path):
    """The image files under ``path`` (any depth), lazily: the first one found answers "any images?"."""
    return (p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _check_class_folders(path: Path, source: str) -> None:
    """datasets infers labels from two or more class folders; fewer is a ``TooFewClasses`` naming them.

    (With two or more folders at mixed depths datasets infers none either; column detection says so.)
    """
    classes = sorted({p.parent.name for p in _folder_images(path) if p.parent != path})
    if len(classes) < 2:
        raise TooFewClasses(classes, source)


def _is_saved_dir(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _open_saved(path: Path, split: str) -> datasets.Dataset:
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DatasetError(f"{path} has splits {sorted(loaded)}, not dataset.split {split!r}")
        return loaded[split]
    return loaded


def _undecoded(dataset: datasets.Dataset | datasets.IterableDataset):
    """Keep images as bytes/paths: decoding waits until an item is known to be used."""
    features = dataset.features or {}
    for name, feature in features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(name, datasets.Image(decode=False))
    return dataset


def _open_hub(cfg: DatasetConfig, seed: int) -> datasets.Dataset:
    _check_hub_reachable(cfg.source, cfg.revision)
    streaming = cfg.n_samples is not None
    try:
        loaded = datasets.load_dataset(cfg.source, split=cfg.split, revision=cfg.revision, streaming=streaming)
    except ConnectionError as exc:
        raise HubUnreachable(_unreachable_message(cfg.source, str(exc))) from None
    if streaming:
        return take_stream_pool(loaded, cfg.n_samples * STREAM_POOL_FACTOR, seed)
    return _undecoded(loaded)


def take_stream_pool(stream: datasets.IterableDataset, size: int, seed: int) -> datasets.Dataset:
    """The first ``size`` items of a seeded shuffle of ``stream``, as an in-memory Dataset."""
    stream = _undecoded(stream).shuffle(seed=seed, buffer_size=max(STREAM_SHUFFLE_BUFFER, size))
    rows = list(stream.take(size))
    return datasets.Dataset.from_list(rows, features=stream.features)


def _check_hub_reachable(source: str, revision: str | None) -> None:
    """Fail in seconds, not after the library's retries, when the hub is known to be out of reach.

    In offline mode the datasets cache may still hold the dataset, so the loader is let try and
    its ConnectionError is reworded. Otherwise one short metadata request tells whether the hub
    answers at all; an HTTP error (not found, gated) is left to ``load_dataset`` to report.
    """
    if datasets.config.HF_HUB_OFFLINE:
        return
    try:
        HfApi().dataset_info(source, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError:
        return
    except Exception as exc:  # any transport failure (DNS, refused, timeout, proxy) means unreachable
        raise HubUnreachable(_unreachable_message(source, f"{type(exc).__name__}: {exc}")) from None


def _unreachable_message(source: str, why: str) -> str:
    local = "" if Path(source).exists() else f" (no local file or folder named {source!r} exists either)"
    return (
        f"the Hugging Face Hub is unreachable, so hub dataset {source!r} cannot be loaded{local}: {why}. "
        "Use local data instead: set dataset.source to an image folder (<class_name>/*.jpg), "
        "a manifest (.csv/.jsonl/.parquet with image paths relative to it and a label column), "
        "or a directory written by Dataset.save_to_disk; "
        "a dataset already in the local datasets cache loads with HF_HUB_OFFLINE=1."
    )
