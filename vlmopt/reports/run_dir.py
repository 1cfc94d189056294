"""The run directory: everything one evaluate / optimize run leaves behind, written as it goes.

``runs/<name>-<timestamp>/`` holds ``config.yaml`` (resolved), ``predictions.jsonl`` (one row
per image, appended and flushed as each prediction finishes, so an interrupted run loses
nothing), ``failures.jsonl`` (items the run could not predict: unreadable images, backend
errors), ``metrics.json``, plots and ``report.html``.

Example::

    run = RunDir.create("runs", "cats_vs_dogs")
    run.write_config(cfg)
    run.append_prediction(record)
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from vlmopt.config import TaskConfig
from vlmopt.errors import VlmoptError
from vlmopt.metrics.records import PredictionRecord

PREDICTIONS = "predictions.jsonl"
FAILURES = "failures.jsonl"
METRICS = "metrics.json"
CONFIG = "config.yaml"
ABSTENTION = "abstention.json"


class RunDirError(VlmoptError, OSError):
    """The run directory cannot be created or written; raised before any model work starts."""


class NotARunDir(RunDirError, FileNotFoundError):
    """A path given as a run directory holds no finished run (``report`` on the wrong folder)."""


class RunDir:
    """A run's directory with thread-safe, line-flushed writers for its JSONL files."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunDir:
        """Make ``<output_dir>/<name>-<timestamp>/`` and prove it is writable before work starts."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = Path(output_dir) / f"{name}-{stamp}"
        path, n = base, 1
        try:
            while path.exists():
                n += 1
                path = base.with_name(f"{base.name}-{n}")
            path.mkdir(parents=True)
            probe = path / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunDirError(
                f"cannot write the run directory {path}: {exc.strerror or exc}. "
                "Set run.output_dir to a writable location with free space."
            ) from None
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """A finished run's directory (it has ``metrics.json``); anything else is a ``NotARunDir`` saying
        what a run directory holds."""
        path = Path(path)
        if not (path / METRICS).is_file():
            if path.is_dir():
                problem = f"has no {METRICS}"
            else:
                problem = "is a file" if path.exists() else "does not exist"
            raise NotARunDir(
                f"{path} {problem}, so it is not a finished vlmopt run directory: give a folder that "
                f"`vlmopt evaluate` or `optimize` wrote under run.output_dir (runs/<name>-<timestamp>/, "
                f"holding {CONFIG}, {PREDICTIONS} and {METRICS})"
            )
        return cls(path)

    def child(self, name: str) -> RunDir:
        """A sub-run (e.g. ``baseline/``) with the same file layout."""
        path = self.path / name
        path.mkdir(exist_ok=True)
        return RunDir(path)

    def write_config(self, cfg: TaskConfig) -> None:
        (self.path / CONFIG).write_text(cfg.model_dump_yaml(), encoding="utf-8")

    def _append(self, name: str, line: str) -> None:
        with self._lock, open(self.path / name, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def append_prediction(self, record: PredictionRecord) -> None:
        self._append(PREDICTIONS, record.to_json())

    def append_failure(self, item_id: str, stage: str, reason: str) -> None:
        """An item the run could not predict (``stage``: 'image' or 'predict'), with the reason."""
        self._append(FAILURES, json.dumps({"id": item_id, "stage": stage, "reason": reason}, ensure_ascii=False))

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path / name
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    def predictions(self) -> list[PredictionRecord]:
        return read_predictions(self.path)

    def failures(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in _jsonl_lines(self.path / FAILURES)]


def _jsonl_lines(path: Path) -> list[str]:
    """The rows of a JSONL file the run appends to; none while it does not exist yet.

    Read line by line rather than with ``pandas.read_json(lines=True)``: each row is parsed into
    its own typed form (a validated ``PredictionRecord``), which a DataFrame would coerce (None to
    NaN, token counts to floats); notebooks get the table from ``reports.notebook.load_run``.
    """
    if not path.exists():
        return []
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_predictions(run_path: str | Path) -> list[PredictionRecord]:
    """The prediction rows of a run directory (a partial file from an interrupted run reads fine)."""
    return [PredictionRecord.from_json(line) for line in _jsonl_lines(Path(run_path) / PREDICTIONS)]
