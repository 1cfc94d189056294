"""Merge reviewed labels into a manifest that a config's ``dataset.source`` points at, and log what changed.

The manifest is a CSV, JSONL or Parquet table with the columns ``id, image, label`` (a
multi-field task: ``id, image`` and one column per field); image paths are relative to the
manifest where the image lies under its folder, else absolute — as the dataset loader reads a
manifest. A config reads it with::

    dataset: {source: labels.csv, id_column: id, image_column: image, label_column: label}

Merging is by id: a new id is a new row, an existing id gets the person's label (a person's
label wins over the one the row had; its other cells are kept), so importing the same export
twice changes nothing. Beside the manifest, ``<stem>.review.jsonl`` logs each label a person
gave — the model's pre-annotation, the person's answer, ``changed`` — one line per annotation,
never twice. Both files are written under a temporary name and renamed: never half-written.

Example::

    merged = merge_into_manifest(read.labels, Path("data/labels.csv"), fields=["label"])
    merged.added, merged.updated, merged.changed     # ids
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmopt.review.annotations import ReadExport, Reviewed, read_export
from vlmopt.review.errors import ReviewError

ID, IMAGE = "id", "image"
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass
class MergeResult:
    """What the merge did, by id."""

    manifest: Path
    changes_log: Path
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # the label differed from the row's and was replaced
    unchanged: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # the person overruled the model's pre-annotation
    confirmed: list[str] = field(default_factory=list)  # the person kept the model's pre-annotation
    total: int = 0


def changes_log_path(manifest: Path) -> Path:
    """``labels.csv`` -> ``labels.review.jsonl``: the log of reviewed labels beside the manifest."""
    return manifest.with_name(f"{manifest.stem}.review.jsonl")


def read_manifest(path: Path, fields: list[str]) -> list[dict[str, Any]]:
    """The manifest's rows (none if the file does not exist yet); it must hold ``id, image`` and the fields."""
    if not path.exists():
        return []
    suffix = path.suffix.lower()
    if suffix == ".csv":
        import pandas as pd

        rows = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ReviewError(f"manifest {path} is not JSONL ({exc.msg}); give another --into") from None
    if rows:
        missing = [c for c in (ID, IMAGE, *fields) if c not in rows[0]]
        if missing:
            raise ReviewError(
                f"manifest {path} has no column {', '.join(missing)} (its columns: {sorted(rows[0])}); "
                f"a review manifest has {', '.join((ID, IMAGE, *fields))}; give another --into"
            )
    seen: set[str] = set()
    for row in rows:
        row[ID] = str(row[ID])
        if row[ID] in seen:
            raise ReviewError(f"manifest {path}: id {row[ID]!r} appears twice; ids must be unique")
        seen.add(row[ID])
    return rows


def image_cell(image_path: str | None, manifest: Path, item_id: str) -> str:
    """The image path as the manifest stores it: relative to the manifest's folder if under it, else absolute."""
    if not image_path:
        raise ReviewError(
            f"reviewed item {item_id!r} has no data.image_path in the export, so the manifest cannot "
            "say where its image is; export the tasks again with `vlmopt review export`"
        )
    path = Path(image_path).resolve()
    try:
        return path.relative_to(manifest.resolve().parent).as_posix()
    except ValueError:
        return str(path)


def merge_into_manifest(labels: list[Reviewed], manifest: Path, *, fields: list[str], export: str = "") -> MergeResult:
    """Add or update a row per reviewed label, then log the labels (see the module docstring)."""
    if manifest.suffix.lower() not in MANIFEST_SUFFIXES:
        raise ReviewError(f"--into {manifest}: a manifest is a {', '.join(MANIFEST_SUFFIXES)} file")
    rows = read_manifest(manifest, fields)
    by_id = {row[ID]: row for row in rows}
    result = MergeResult(manifest, changes_log_path(manifest))
    for label in labels:
        (result.changed if label.changed_fields else result.confirmed).append(label.item_id)
        row = by_id.get(label.item_id)
        if row is None:
            row = {ID: label.item_id, IMAGE: image_cell(label.image_path, manifest, label.item_id), **label.answer}
            rows.append(row)
            by_id[label.item_id] = row
            result.added.append(label.item_id)
        elif any(str(row.get(name)) != value for name, value in label.answer.items()):
            row.update(label.answer)
            result.updated.append(label.item_id)
        else:
            result.unchanged.append(label.item_id)
    result.total = len(rows)
    _write_manifest(rows, manifest)
    _append_log(labels, result.changes_log, export)
    return result


def _write_manifest(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.DataFrame(rows)
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    else:
        tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def _append_log(labels: list[Reviewed], path: Path, export: str) -> None:
    """One line per annotation not logged before (keyed by item, task and annotation id)."""
    logged = set()
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                logged.add((entry["id"], entry.get("task_id"), entry.get("annotation_id")))
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    new = [
        {
            "id": label.item_id,
            "answer": label.answer,
            "model_answer": label.model_answer,
            "model_confidence": label.model_confidence,
            "changed": bool(label.changed_fields),
            "changed_fields": label.changed_fields,
            "task_id": label.task_id,
            "annotation_id": label.annotation_id,
            "annotator": label.annotator,
            "export": export,
            "imported_at": stamp,
        }
        for label in labels
        if (label.item_id, label.task_id, label.annotation_id) not in logged
    ]
    if new:
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in new))


@dataclass
class ImportResult:
    """An import: what the export held, what was left out, and what the merge did."""

    export: Path
    read: ReadExport
    merge: MergeResult

    def summary(self) -> str:
        m = self.merge
        line = (
            f"imported {len(self.read.labels)} of {self.read.n_tasks} tasks from {self.export} into {m.manifest} "
            f"({m.total} rows: {len(m.added)} added, {len(m.updated)} relabelled, {len(m.unchanged)} already so); "
            f"the person changed {len(m.changed)} of the model's answers and confirmed {len(m.confirmed)} "
            f"(logged in {m.changes_log})"
        )
        if self.read.skipped.count():
            line += f"; left out {self.read.skipped.describe()}"
        return line


def import_review(export: Path, manifest: Path, *, controls: dict[str, list[str]] | None = None) -> ImportResult:
    """Read a Label Studio JSON export and merge its labels into ``manifest`` (see the module docstring)."""
    read = read_export(export, controls=controls)
    merge = merge_into_manifest(read.labels, manifest, fields=list(read.controls), export=export.name)
    return ImportResult(export, read, merge)
