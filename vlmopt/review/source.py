"""What ``vlmopt review export`` reads: a run directory or a ``vlmopt predict`` output, as review candidates.

Both hold one row per image with the model's answer and, where the backend measured it, its
confidence; they differ in what else they know:

* a **run directory** (``evaluate`` / ``optimize``) has the gold answer, the image's path
  (``image_ref``) and the task (``config.yaml``, else the labels ``metrics.json`` counted);
* a **predict output** (JSONL, CSV, a Parquet file or folder of parts, a ``--ray`` folder of
  shards; columns :data:`~vlmopt.predict.rows.COLUMNS`) has no gold, its id is the image path as
  predict was given it (relative to the folder predict ran in: ``image_root``), and its task is
  the artifact's that predict ran (``--artifact``).

A row that says ``abstained`` (the artifact's threshold declined to answer) keeps it. Answers
are normalised to field -> value (``{"label": "cat"}`` for a single-label task), so one shape —
one Label Studio ``Choices`` per field — serves single-label and multi-field tasks.

Example::

    source = read_source("runs/cats-20260101-120000")
    source.controls          # {"label": ["cat", "dog"]}
    source.candidates[0]     # Candidate(id="img_3", image=Path(...), answer={"label": "dog"}, ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlmopt.review.errors import ReviewError

SINGLE_LABEL_FIELD = "label"
"""The one field of a single-label task (its Choices' name in Label Studio, its manifest column)."""
PREDICT_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Candidate:
    """One image a person might review: the model's answer (None: invalid output), its confidence, the gold."""

    id: str
    image: Path | None  # the image file, where one exists (a hub dataset's rows have none)
    answer: dict[str, str] | None
    confidence: float | None
    gold: dict[str, str] | None = None
    abstained: bool = False


@dataclass(frozen=True)
class ReviewSource:
    """The candidates of one run or predict output, and the closed sets a person chooses from."""

    path: Path
    controls: dict[str, list[str]]  # field -> its classes (one Choices each)
    model_version: str  # how Label Studio names the model behind the pre-annotations
    candidates: list[Candidate]

    @property
    def has_gold(self) -> bool:
        return any(c.gold is not None for c in self.candidates)


def task_controls(output: str, labels: list[str] | None, fields: dict[str, list[str]] | None, where: str):
    """Field -> classes for a task; a multi-label task, or one whose labels are unknown, is a ``ReviewError``."""
    if output == "multi_label":
        raise ReviewError(
            f"{where}: review supports single-label and multi-field tasks only, not multi_label "
            "(one Choices per field; a label set has no pre-annotation score per label here)"
        )
    if output == "multi_field":
        return {name: list(values) for name, values in (fields or {}).items()}
    if not labels:
        raise ReviewError(f"{where}: the class labels are unknown; give --artifact (the artifact that made the rows)")
    return {SINGLE_LABEL_FIELD: list(labels)}


def config_controls(cfg) -> dict[str, list[str]] | None:
    """Field -> classes of a task config (``TaskConfig``); None when its labels come from the dataset."""
    task = cfg.task
    mapping = cfg.dataset.label_mapping
    labels = task.labels or (list(dict.fromkeys(mapping.values())) if mapping else None)
    if task.output == "single_label" and not labels:
        return None
    return task_controls(task.output, labels, task.fields, cfg.name or "config")


def read_source(
    path: str | Path, *, artifact: str | Path | None = None, image_root: str | Path | None = None
) -> ReviewSource:
    """The review candidates of a run directory or a predict output (see the module docstring).

    ``artifact`` gives the task (required for a predict output; for a run, it overrides the
    run's config). ``image_root`` is where relative image paths start (default: the current
    folder, where predict ran).
    """
    from vlmopt.reports.run_dir import CONFIG, METRICS, PREDICTIONS

    path = Path(path)
    root = Path(image_root) if image_root is not None else Path.cwd()
    finished = (path / METRICS).is_file()
    if path.is_dir() and (finished or ((path / CONFIG).is_file() and (path / PREDICTIONS).is_file())):
        return _read_run(path, artifact, root)  # an interrupted run's rows are worth a review too
    if path.exists() and (path.suffix.lower() in PREDICT_SUFFIXES or path.is_dir()):
        if artifact is None:
            raise ReviewError(
                f"{path} is a predict output: give --artifact (the artifact predict ran), which holds the task's labels"
            )
        return _read_predict_output(path, artifact, root)
    what = "does not exist" if not path.exists() else "is neither a run directory nor a predict output"
    raise ReviewError(
        f"{path} {what}: give a run directory (runs/<name>-<timestamp>/, with metrics.json) or a "
        f"`vlmopt predict` output ({', '.join(PREDICT_SUFFIXES)})"
    )


def _artifact_task(artifact: str | Path) -> tuple[dict[str, list[str]], str, str]:
    """The artifact's field -> classes, how Label Studio names its model, and its output kind."""
    from vlmopt.artifacts import read_verified

    frozen = read_verified(artifact)
    task = frozen.task
    controls = task_controls(task.output, task.labels, task.fields, str(artifact))
    return controls, f"{Path(artifact).stem}@{frozen.sha256[:12]}", task.output


def _read_run(path: Path, artifact: str | Path | None, root: Path) -> ReviewSource:
    from vlmopt.config import load_config
    from vlmopt.reports.run_dir import CONFIG, METRICS, read_predictions

    if artifact is not None:
        controls, _, _ = _artifact_task(artifact)
    else:
        cfg = load_config(path / CONFIG) if (path / CONFIG).is_file() else None
        controls = config_controls(cfg) if cfg is not None else None
        if controls is None:  # labels read from the dataset: the ones metrics.json counted
            metrics = json.loads((path / METRICS).read_text(encoding="utf-8")) if (path / METRICS).is_file() else {}
            output = cfg.task.output if cfg is not None else metrics.get("output_kind", "single_label")
            controls = task_controls(output, metrics.get("confusion", {}).get("labels"), None, str(path))
    candidates = []
    for record in read_predictions(path):
        row = record.model_dump()
        candidates.append(
            Candidate(
                id=record.id,
                image=_image_file(record.image_ref, root),
                answer=fields_of(record.predicted),
                confidence=record.confidence,
                gold=fields_of(record.gold),
                abstained=bool(row.get("abstained", False)),
            )
        )
    return ReviewSource(path, controls, path.name, candidates)


def _read_predict_output(path: Path, artifact: str | Path, root: Path) -> ReviewSource:
    controls, model_version, output = _artifact_task(artifact)
    candidates = []
    for number, row in enumerate(read_predict_rows(path), start=1):
        if "id" not in row or "label" not in row:
            raise ReviewError(f"{path}: row {number} has columns {sorted(row)}, not a predict row's id and label")
        valid = _truthy(row.get("valid", True))
        label = row["label"] if valid else None
        if isinstance(label, str) and output == "multi_field":  # a CSV cell holds the answer as JSON text
            try:
                label = json.loads(label) if label else None
            except json.JSONDecodeError:
                raise ReviewError(f"{path}: row {number}'s label {label!r} is not a multi-field answer") from None
        candidates.append(
            Candidate(
                id=str(row["id"]),
                image=_image_file(str(row["id"]), root),
                answer=fields_of(label or None),
                confidence=_number(row.get("confidence")),
                abstained=_truthy(row.get("abstained", False)),
            )
        )
    return ReviewSource(path, controls, model_version, candidates)


def read_predict_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a predict output: a JSONL, CSV or Parquet file, or a folder of Parquet parts / shards.

    A Parquet folder's ``_pending.jsonl`` (rows of an interrupted run not yet in a part) is read too.
    """
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [row for p in files if p.suffix in (".parquet", ".jsonl") for row in read_predict_rows(p)]
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ReviewError(f"{path}, line {number}, is not JSON ({exc.msg}); fix or remove the line") from None
    return rows


def fields_of(answer: Any) -> dict[str, str] | None:
    """An answer as field -> value: a label becomes ``{"label": label}``; None (invalid) stays None."""
    if answer is None:
        return None
    if isinstance(answer, dict):
        return {str(k): str(v) for k, v in answer.items()}
    return {SINGLE_LABEL_FIELD: str(answer)}


def _image_file(ref: str | None, root: Path) -> Path | None:
    if not ref:
        return None
    path = Path(ref).expanduser()
    path = path if path.is_absolute() else root / path
    return path.resolve() if path.is_file() else None


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return None if number != number else number  # NaN (a CSV's empty cell read as float) is no confidence
