"""``vlmopt predict``: a frozen classifier over image files and folders -> JSONL or CSV rows.

Unreadable images are reported by path and skipped; every readable one gets a row
(id = path, label, confidence, valid, raw output).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dspy

from vlmopt.artifacts import FrozenProgram
from vlmopt.datasets.errors import DatasetError
from vlmopt.datasets.images import BadImage, load_image, to_dspy_image
from vlmopt.evaluate import answer_of
from vlmopt.programs.adapter import RAW_KEY
from vlmopt.programs.confidence import label_confidence

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


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


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    """JSONL, or CSV when the path ends in .csv (answers that are lists/dicts become JSON text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["id", "label", "confidence", "valid", "raw"])
            writer.writeheader()
            for row in rows:
                label = row["label"]
                cell = label if isinstance(label, str) or label is None else json.dumps(label)
                writer.writerow({**row, "label": cell})
    else:
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
