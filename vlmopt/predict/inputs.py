"""What ``vlmopt predict`` reads: files, folders, globs and manifests, discovered lazily as :class:`Item`s.

A nightly run points at a bucket that may hold millions of images, so nothing here lists them
all at once: folders are walked directory by directory (each directory's names sorted, so the
order is the same every run), globs are expanded with ``glob.iglob``, and a manifest (CSV, JSONL
or Parquet with a column of image paths or URLs) is streamed by ``datasets`` (``streaming=True``), a
block of rows at a time. Only paths travel; pixels are decoded later, by the worker that
predicts the image.

An item's id is what resume keys on: the path as given (``inbox/a.jpg``, the folder argument
joined with the file's place under it), or a manifest's cell as written. Rerun the same command
from the same directory and the ids match. The same id found twice (a file named and also inside
a named folder) is yielded once; that set of ids is the one structure that grows with the run.

Example::

    check_inputs(["inbox/", "extra/*.png", "list.csv"])      # fails fast on a path that names nothing
    for item in discover(["inbox/", "extra/*.png", "list.csv"]):
        item.id, item.source
"""

from __future__ import annotations

import glob
import itertools
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vlmopt.datasets.columns import IMAGE_SUFFIXES
from vlmopt.datasets.errors import DatasetError
from vlmopt.datasets.images import is_url

MANIFEST_BUILDERS = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
"""Manifest suffix -> the ``datasets`` builder that streams it."""
PATH_COLUMNS = ("image", "path", "file", "filename", "file_name", "image_path")
"""Column names taken as a manifest's image paths when ``image_column`` is not given (first present wins)."""
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One image to predict: ``id`` (the output row's key, what resume matches) and where its bytes are."""

    id: str
    source: str


def is_glob(arg: str) -> bool:
    """An argument that names no existing path but holds glob characters is a pattern."""
    return not Path(arg).exists() and any(char in _GLOB_CHARS for char in arg)


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in MANIFEST_BUILDERS


def check_inputs(args: Iterable[str | Path]) -> list[str]:
    """The arguments as strings, or a ``DatasetError`` naming the first that is neither a path nor a glob."""
    args = [str(arg) for arg in args]
    for arg in args:
        if not Path(arg).exists() and not is_glob(arg) and not is_url(arg):
            raise DatasetError(f"predict input {arg} does not exist (give image files, folders, a glob, a manifest "
                               "or image URLs)")
    return args


def discover(args: Iterable[str | Path], *, image_column: str | None = None) -> Iterator[Item]:
    """Every image the arguments name, once each, lazily (see the module docstring)."""
    seen: set[str] = set()
    for arg in check_inputs(args):
        for item in _expand(arg, image_column):
            if item.id not in seen:
                seen.add(item.id)
                yield item


def no_images_error(args: Iterable[str | Path]) -> DatasetError:
    """The error for arguments that named no image at all."""
    names = ", ".join(str(arg) for arg in args)
    return DatasetError(f"no image files in {names} (looked for .jpg, .png, .webp and the other formats PIL opens)")


def _expand(arg: str, image_column: str | None) -> Iterator[Item]:
    path = Path(arg)
    if is_url(arg):
        yield Item(arg, arg)  # one image by URL; a manifest lists many
    elif path.is_dir():
        yield from (Item(p, p) for p in _walk(path))
    elif is_manifest(path):
        yield from _manifest_items(path, image_column)
    elif path.exists():
        yield Item(arg, arg)  # named explicitly: taken as given (a bad file becomes a failure row)
    else:
        matches = (m for m in glob.iglob(arg, recursive=True) if _is_image_file(m))
        yield from (Item(m, m) for m in matches)


def _walk(folder: Path) -> Iterator[str]:
    """Image files under ``folder`` at any depth; each directory's entries sorted, never the whole tree at once."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                yield os.path.join(root, name)


def _is_image_file(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(path)


def _manifest_items(path: Path, image_column: str | None) -> Iterator[Item]:
    """A manifest's rows as items: id = the cell as written, source = that path relative to the manifest, or the URL."""
    import datasets

    stream = datasets.load_dataset(
        MANIFEST_BUILDERS[path.suffix.lower()], data_files={"train": str(path)}, split="train", streaming=True
    )
    rows = iter(stream)
    first = next(rows, None)
    if first is None:
        return
    column = _path_column(first, image_column, path)
    base = path.resolve().parent
    for row in itertools.chain([first], rows):
        value = row[column]
        if value is None or str(value).strip() == "":
            continue
        cell = str(value)
        yield Item(cell, cell if os.path.isabs(cell) or is_url(cell) else str(base / cell))


def _path_column(row: dict, image_column: str | None, path: Path) -> str:
    columns = list(row)
    if image_column is not None:
        if image_column not in row:
            raise DatasetError(f"manifest {path}: no column {image_column!r}; its columns are {columns}")
        return image_column
    named = next((c for c in PATH_COLUMNS if c in row), None)
    if named is not None:
        return named
    if len(columns) == 1:
        return columns[0]
    raise DatasetError(
        f"manifest {path}: which column holds the image paths? none is named {' / '.join(PATH_COLUMNS)}; "
        f"its columns are {columns} (give --image-column)"
    )
