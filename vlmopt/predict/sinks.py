"""Output files that grow a row at a time and say, when reopened, which ids they already hold.

``vlmopt predict`` appends each row the moment its image is done, so a kill loses only the images
in flight, and a rerun of the same command reads the ids back and skips them (resume). Each row is
one ``write`` system call on an unbuffered file: once it returns, the row is in the kernel's page
cache and survives the process being killed (``kill -9``); it is not ``fsync``-ed, so a power cut
may still lose the last rows — a rerun predicts them again. A row cut short anyway (a full disk)
is found on reopening as a last line without its newline, and dropped.

* JSONL: one ``json.dumps`` per line — answers keep their JSON shape, floats their exact value;
* CSV: the ``csv`` module's minimal quoting, the same cells ``write_rows`` (pandas) writes;
  read back with pandas, in chunks;
* Parquet: :class:`~vlmopt.predict.parquet_sink.ParquetSink` (a folder of parts, see there).

:class:`FailureLog` is the failures file: rewritten by each run, so it lists what is still missing.

Example::

    with open_sink(Path("labels.jsonl"), task) as sink:
        len(sink.ids)                     # rows already there (a resumed run skips them)
        sink.append({"id": "a.jpg", "label": "cat", "confidence": 0.9, "valid": True, "raw": "..."})
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmopt.config import TaskSpec
from vlmopt.errors import VlmoptError
from vlmopt.predict.rows import COLUMNS, Failure, answer_text, label_key


class OutputError(VlmoptError, ValueError):
    """An existing output file that is not a predict output this run can add to."""


class RowSink:
    """An output that appends rows; ``ids`` and ``labels`` cover the rows already there and those appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: set[str] = set()
        self.labels: Counter[str] = Counter()

    def append(self, row: dict[str, Any]) -> bool:
        """Write one row now; False (nothing written) if its id is already in the output."""
        if row["id"] in self.ids:
            return False
        self._write(row)
        self._keep(row["id"], row["label"])
        return True

    def _keep(self, item_id: str, label: Any) -> None:
        self.ids.add(item_id)
        self.labels[label_key(label)] += 1

    def _write(self, row: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Finish the output (the Parquet sink writes its last part); appending rows needs no close."""

    def __enter__(self) -> RowSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drop_partial_tail(path: Path) -> None:
    """Cut a last line that has no newline (a write cut short): every complete row ends with one."""
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            step = min(65536, position)
            f.seek(position - step)
            chunk = f.read(step)
            if position == end and chunk.endswith(b"\n"):
                return
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                f.truncate(position - step + cut + 1)
                return
            position -= step
        f.truncate(0)


class AppendFile:
    """An unbuffered append-only file: each ``write`` is one system call."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab", buffering=0)

    def write(self, text: str) -> None:
        self._file.write(text.encode("utf-8"))

    def close(self) -> None:
        self._file.close()


class JsonlSink(RowSink):
    """JSON lines: the same line format as a run's ``predictions.jsonl``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        for row in read_jsonl(path):
            if "id" not in row:
                raise OutputError(f"{path} holds a line without an 'id'; it is not a predict output: choose another -o")
            self._keep(str(row["id"]), row.get("label"))
        self._file = AppendFile(path)

    def _write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL file (a cut-short last line dropped first); none if it does not exist."""
    if not path.exists():
        return
    drop_partial_tail(path)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise OutputError(f"{path}, line {number}, is not JSON ({exc.msg}); fix or move the file") from None


class CsvSink(RowSink):
    """CSV with the header :data:`COLUMNS`; list and dict cells (answers, top labels) as JSON text."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        new = not path.exists() or path.stat().st_size == 0
        if not new:
            self._read_existing()
        self._file = AppendFile(path)
        if new:
            self._file.write(",".join(COLUMNS) + "\n")

    def _read_existing(self) -> None:
        import pandas as pd

        drop_partial_tail(self.path)
        with self.path.open(encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            raise OutputError(f"{self.path} has columns {header}, not {COLUMNS}: it is not a predict output; "
                              "choose another -o")
        try:
            chunks = pd.read_csv(self.path, usecols=["id", "label"], dtype=str, keep_default_na=False,
                                 chunksize=50_000)
            for chunk in chunks:
                for item_id, label in zip(chunk["id"], chunk["label"], strict=True):
                    self._keep(item_id, label)
        except pd.errors.ParserError as exc:
            raise OutputError(f"{self.path} cannot be read back as CSV ({exc}); fix or move the file") from None

    def _write(self, row: dict[str, Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow([answer_text(row[column]) for column in COLUMNS])
        self._file.write(buffer.getvalue())

    def close(self) -> None:
        self._file.close()


def open_sink(path: Path, task: TaskSpec, *, rows_per_part: int | None = None) -> RowSink:
    """The sink for ``path``'s suffix: ``.csv``, ``.parquet`` (a folder of parts), anything else JSONL."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return CsvSink(path)
    if suffix == ".parquet":
        from vlmopt.predict.parquet_sink import DEFAULT_ROWS_PER_PART, ParquetSink

        return ParquetSink(path, task, rows_per_part=rows_per_part or DEFAULT_ROWS_PER_PART)
    return JsonlSink(path)


def default_failures_path(output: Path) -> Path:
    """``labels.csv`` -> ``labels.failures.jsonl``, beside the output."""
    return output.with_name(f"{output.stem}.failures.jsonl")


class FailureLog:
    """The failures file (JSONL: id, stage, reason, message), started empty by each run.

    Failed images are not in the output, so the next run tries them again; the file then lists
    only what failed that time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        self._file = AppendFile(path)
        self.by_stage: Counter[str] = Counter()
        self.first: Failure | None = None

    @property
    def count(self) -> int:
        return sum(self.by_stage.values())

    def append(self, failure: Failure) -> None:
        self._file.write(failure.to_json() + "\n")
        self.by_stage[failure.stage] += 1
        self.first = self.first or failure

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> FailureLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
