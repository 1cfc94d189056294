"""``vlmopt predict``: a frozen classifier over image files and folders -> JSONL, CSV or Parquet rows.

Unreadable images are reported by path and skipped; every readable one gets a row
(id = path, label, confidence, valid, raw output).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dspy
import pandas as pd

from vlmopt.artifacts import FrozenProgram
from vlmopt.datasets.errors import DatasetError
from vlmopt.datasets.images import BadImage, load_image, to_dspy_image
from vlmopt.programs.adapter import RAW_KEY
from vlmopt.programs.confidence import label_confidence
from vlmopt.programs.records import answer_of

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
COLUMNS = ["id", "label", "confidence", "valid", "raw"]


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and image files under folders (sorted, recursive); none at all is a ``DatasetError``."""
    paths = [Path(p) for p in paths]
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    if not found:
        names = ", ".join(map(str, paths))
        raise DatasetError(f"no image files in {names} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return found


def predict_files(
    frozen: FrozenProgram, files: list[Path], *, lm: dspy.LM, max_side: int = 768, num_threads: int = 4
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(rows, skipped): one row per readable image; each unreadable one named with its reason."""
    examples, skipped = [], []
    for path in files:
        try:
            image = to_dspy_image(load_image(path, max_side=max_side))
        except BadImage as bad:
            skipped.append({"id": str(path), "reason": bad.reason, "message": str(bad)})
            continue
        examples.append(dspy.Example(image=image, id=str(path)).with_inputs("image"))
    with dspy.context(lm=lm):
        preds = frozen.program.batch(examples, num_threads=num_threads, return_failed_examples=False)
    rows = []
    for example, pred in zip(examples, preds, strict=True):
        _, confidence = label_confidence(pred)
        rows.append(
            {
                "id": example.id,
                "label": answer_of(pred, frozen.task),
                "confidence": confidence,
                "valid": bool(pred.get("valid", True)),
                "raw": pred.get(RAW_KEY) or "",
            }
        )
    return rows, skipped


def _answer_text(label: Any) -> Any:
    """A CSV cell is text: a list (multi-label) or dict (multi-field) answer is written as JSON."""
    return json.dumps(label, ensure_ascii=False) if isinstance(label, list | dict) else label


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.assign(label=frame["label"].map(_answer_text)).to_csv(path, index=False)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    frame.to_parquet(path, index=False)  # pyarrow keeps list / dict answers typed (list, struct columns)


TABLE_WRITERS: dict[str, Callable[[pd.DataFrame, Path], None]] = {".csv": _write_csv, ".parquet": _write_parquet}
"""Suffix -> the pandas writer of that table format; any other suffix gets JSONL."""


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    """Rows as a CSV or Parquet table (by the path's suffix, through pandas), else as JSONL.

    JSONL is one ``json.dumps`` per row, the same line format as a run's ``predictions.jsonl``:
    answers keep their JSON shape and floats their exact value (pandas' JSON writer rounds them).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = TABLE_WRITERS.get(path.suffix.lower())
    if writer is not None:
        # float: a run without log-probs still has a numeric (all-null) confidence column
        writer(pd.DataFrame(rows, columns=COLUMNS).astype({"confidence": float}), path)
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
