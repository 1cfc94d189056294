"""Parquet output for large runs: a folder of immutable parts plus a journal of the rows not yet in one.

A Parquet file cannot be appended to — its footer, written last, is what makes it readable — so a
run that wrote one file at the end would lose every row to a kill at 99%, and one file per row
would leave a million tiny files. So ``-o labels.parquet`` is a *Parquet dataset folder*, the
layout Spark, Ray Data (``write_parquet``) and pyarrow write and read::

    labels.parquet/
        part-00000.parquet      # rows_per_part rows each, typed by the task's row schema
        part-00001.parquet
        _pending.jsonl          # rows since the last part, one line each, as they finish

Each finished row is appended to ``_pending.jsonl`` at once (one write, like the JSONL output),
so a kill loses only the images in flight. Every ``rows_per_part`` rows, and at the end of the
run, the pending rows become the next part: written under a temporary name, then renamed, so a
part is whole or absent; then the journal is emptied. Reopening after a kill turns what the
journal holds into a part first (dropping rows a part already holds: the kill may have come
between the rename and the emptying). Readers skip names starting with ``_``, so
``pd.read_parquet("labels.parquet")`` or ``pq.read_table(...)`` read exactly the parts.

Example::

    with ParquetSink(Path("labels.parquet"), task, rows_per_part=10_000) as sink:
        sink.append(row)
    pd.read_parquet("labels.parquet")
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlmopt.config import TaskSpec
from vlmopt.predict.rows import row_schema
from vlmopt.predict.sinks import AppendFile, OutputError, RowSink, read_jsonl

DEFAULT_ROWS_PER_PART = 10_000
"""Rows per part file: big enough for Parquet's column chunks to pay, small enough to write in a moment."""
PENDING = "_pending.jsonl"
_PART = re.compile(r"^part-(\d+)\.parquet$")


class ParquetSink(RowSink):
    """See the module docstring; ``schema`` is the task's row schema, the same in every part."""

    def __init__(self, path: Path, task: TaskSpec, *, rows_per_part: int = DEFAULT_ROWS_PER_PART) -> None:
        super().__init__(path)
        if path.exists() and not path.is_dir():
            raise OutputError(
                f"{path} is a single Parquet file; predict writes a Parquet dataset folder (parts added as rows "
                "finish): give another -o, or move the file"
            )
        path.mkdir(parents=True, exist_ok=True)
        self.schema = row_schema(task)
        self.rows_per_part = rows_per_part
        self._buffer: list[dict[str, Any]] = []
        for stale in path.glob("_part-*.tmp"):  # a part being written when the run was killed
            stale.unlink()
        self._next_part = 0
        for part in self.parts():
            self._read_part(part)
        for row in read_jsonl(path / PENDING):
            if row["id"] not in self.ids:
                self._buffer.append(row)
                self._keep(row["id"], row["label"])
        self._write_part()
        self._journal = AppendFile(path / PENDING)

    def parts(self) -> list[Path]:
        """The part files, in the order they were written."""
        return sorted(p for p in self.path.iterdir() if _PART.match(p.name))

    def _read_part(self, part: Path) -> None:
        file = pq.ParquetFile(part)
        if not file.schema_arrow.remove_metadata().equals(self.schema):
            raise OutputError(f"{part} was written for another task (columns {file.schema_arrow}); "
                              "give another -o for this artifact")
        for batch in file.iter_batches(columns=["id", "label"]):
            for item_id, label in zip(batch.column("id").to_pylist(), batch.column("label").to_pylist(), strict=True):
                self._keep(item_id, label)
        self._next_part = max(self._next_part, int(_PART.match(part.name).group(1)) + 1)

    def _write(self, row: dict[str, Any]) -> None:
        self._journal.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._buffer.append(row)
        if len(self._buffer) >= self.rows_per_part:
            self._write_part()

    def _write_part(self) -> None:
        """The pending rows as the next part (whole or absent), then an empty journal."""
        if not self._buffer:
            return
        name = f"part-{self._next_part:05d}.parquet"
        temporary = self.path / f"_part-{self._next_part:05d}.tmp"
        pq.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema), temporary)
        os.replace(temporary, self.path / name)
        (self.path / PENDING).write_bytes(b"")
        self._buffer = []
        self._next_part += 1

    def close(self) -> None:
        self._write_part()
        self._journal.close()
        pending = self.path / PENDING
        if pending.exists() and pending.stat().st_size == 0:
            pending.unlink()
