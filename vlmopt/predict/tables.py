"""Rows already in memory -> one JSONL, CSV or Parquet file, in one go (a notebook's or a test's writer).

``vlmopt predict`` itself streams through :mod:`vlmopt.predict.sinks`; this is the whole-table
writer for rows a caller holds, with the same cells: CSV and Parquet through pandas / pyarrow
(Parquet keeps list and dict answers typed), JSONL one ``json.dumps`` per row.

Example::

    write_rows(rows, Path("labels.parquet"))   # a single Parquet file
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from vlmopt.predict.rows import COLUMNS, answer_text


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.assign(label=frame["label"].map(answer_text), top_labels=frame["top_labels"].map(answer_text)).to_csv(
        path, index=False)


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
