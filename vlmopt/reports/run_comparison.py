"""Many run directories read as rows of one comparison, refused when they did not score the same images.

A row is one classifier on one test set: the config's hand-written prompt, the optimized program,
CLIP zero-shot, a linear probe, a fine-tuned VLM. The reader is generic over run directories:

- a finished run (``metrics.json``) is one row; an optimize run is two, its baseline prompt
  (``baseline_metrics.json``, rows in ``baseline/``) and the optimized program;
- a folder of finished runs (``vlmopt baseline``'s, with ``zero_shot/`` and ``linear_probe/``) is
  a row per sub-run.

What a row shows comes from ``metrics.json``: the standard metrics every run writes, plus, where
the writer knows them, ``method`` (or ``kind``: ``prompt``, ``prompt-baseline``,
``prompt-optimized``, ``zero-shot``, ``linear-probe``, ``finetune``), ``model``, and the cost fields
``parameters``, ``latency_ms_per_image``, ``model_calls`` and ``wall_s`` (the whole run's). A run
without them still compares: latency falls back to the mean per-request latency of its rows, the
parameter count to the safetensors headers of a local model directory, the rest to "unknown".

Numbers side by side mean something only on the same images, so :func:`check_same_test_set`
compares each run's scored ids (its rows, plus the items that failed to predict) and, where both
runs recorded it, the split name and the split fingerprint (sha256 of the seeded split's ids).

Example::

    runs = collect_runs(["runs/shapes-20250101-120000", "runs/shapes-baseline-20250101-130000"])
    check_same_test_set(runs)            # raises SplitMismatch naming the first run that differs
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlmopt.errors import VlmoptError
from vlmopt.reports.run_dir import CONFIG, FAILURES, METRICS, PREDICTIONS, NotARunDir, RunDir
from vlmopt.reports.run_view import BASELINE_METRICS

METHOD_LABELS = {
    "prompt": "prompt",
    "prompt-baseline": "baseline prompt",
    "prompt-optimized": "optimized prompt",
    "zero-shot": "zero-shot",
    "linear-probe": "linear probe",
    "finetune": "fine-tuned VLM",
}
"""How a method reads in the table; an unknown method is shown as written."""
_FAMILY_NAMES = {"clip": "CLIP", "siglip": "SigLIP", "siglip2": "SigLIP 2"}


class SplitMismatch(VlmoptError, ValueError):
    """Runs that scored different images (another split, seed or dataset) cannot share one table."""


@dataclass(frozen=True)
class ComparedRun:
    """One row: a classifier's test metrics, where they came from, and which images they cover."""

    path: Path
    method: str
    metrics: dict[str, Any]
    test_ids: frozenset[str]
    model: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = METHOD_LABELS.get(self.method, self.method)
        family = _FAMILY_NAMES.get(self.metrics.get("family", ""))
        return f"{family} {name}" if family and self.method in ("zero-shot", "linear-probe") else name

    @property
    def split(self) -> str | None:
        return self.metrics.get("split")

    @property
    def fingerprint(self) -> str | None:
        return self.metrics.get("split_fingerprint")

    @property
    def latency_ms_per_image(self) -> float | None:
        if self.metrics.get("latency_ms_per_image") is not None:
            return self.metrics["latency_ms_per_image"]
        mean = (self.metrics.get("latency") or {}).get("mean_s")
        return None if mean is None else 1000 * mean

    @property
    def parameters(self) -> int | None:
        if self.metrics.get("parameters") is not None:
            return self.metrics["parameters"]
        return checkpoint_parameters(self.model) if self.model else None


def checkpoint_parameters(model: str) -> int | None:
    """Parameters of a local checkpoint, from its safetensors headers (no weights read); None if not local."""
    directory = Path(model).expanduser()
    files = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for file in files:
        with safe_open(file, framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                size = 1
                for dim in weights.get_slice(name).get_shape():
                    size *= dim
                total += size
    return total


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def scored_ids(path: Path) -> frozenset[str]:
    """The items a run tried on its split: its rows and the items that failed to predict (not unreadable
    images, which are in no split)."""
    ids = {json.loads(line)["id"] for line in _lines(path / PREDICTIONS)}
    ids |= {row["id"] for row in map(json.loads, _lines(path / FAILURES)) if row.get("stage") == "predict"}
    return frozenset(ids)


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()] if path.exists() else []


def _config(path: Path) -> dict[str, Any]:
    file = path / CONFIG
    return (yaml.safe_load(file.read_text(encoding="utf-8")) or {}) if file.exists() else {}


def _row(path: Path, metrics: dict[str, Any], default_method: str, ids_from: Path, config: dict) -> ComparedRun:
    model = metrics.get("model") or (config.get("model") or {}).get("id")
    method = metrics.get("method") or metrics.get("kind") or default_method
    return ComparedRun(path, method, metrics, scored_ids(ids_from), model, config)


def runs_in(path: str | Path) -> list[ComparedRun]:
    """The rows one path given on the command line stands for (see the module docstring)."""
    path = Path(path)
    if not (path / METRICS).is_file() and path.is_dir():
        children = sorted(child for child in path.iterdir() if (child / METRICS).is_file())
        if children:
            rows = [row for child in children for row in runs_in(child)]
            return sorted(
                rows,
                key=lambda row: (
                    list(METHOD_LABELS).index(row.method) if row.method in METHOD_LABELS else len(METHOD_LABELS)
                ),
            )
    run = RunDir.open(path)  # a NotARunDir naming what a run directory holds
    metrics, config = _read_json(run.path / METRICS), _config(run.path)
    if not (run.path / BASELINE_METRICS).is_file():
        return [_row(run.path, metrics, "prompt", run.path, config)]
    baseline = _read_json(run.path / BASELINE_METRICS)
    return [
        _row(run.path / "baseline", baseline, "prompt-baseline", run.path / "baseline", config),
        _row(run.path, metrics, "prompt-optimized", run.path, config),
    ]


def collect_runs(paths: Iterable[str | Path]) -> list[ComparedRun]:
    """Every row of every path, in the order given; an empty result is a ``NotARunDir``."""
    rows = [row for path in paths for row in runs_in(path)]
    if not rows:
        raise NotARunDir(
            "no runs to compare: give run directories that `vlmopt evaluate`, `optimize` or `baseline` wrote"
        )
    return rows


def _difference(ref: ComparedRun, other: ComparedRun) -> str | None:
    """Why ``other`` did not score ``ref``'s images, or None when it did."""
    if ref.split and other.split and ref.split != other.split:
        return f"it scored the {other.split} split, the first run the {ref.split} split"
    if ref.test_ids != other.test_ids:
        only_ref, only_other = sorted(ref.test_ids - other.test_ids), sorted(other.test_ids - ref.test_ids)
        example = (only_other or only_ref)[0]
        return (
            f"{len(other.test_ids)} images against {len(ref.test_ids)}, {len(only_other)} only in it and "
            f"{len(only_ref)} only in the first run (e.g. {example!r})"
        )
    if ref.fingerprint and other.fingerprint and ref.fingerprint != other.fingerprint:
        return "the same test images, but split fingerprints differ (another seed or dataset for train/val)"
    return None


def check_same_test_set(runs: list[ComparedRun], *, allow: bool = False) -> dict[Path, str]:
    """Raise ``SplitMismatch`` for the first run whose test set differs from the first run's;
    with ``allow``, return a note per such run (by path) instead, for the table to flag."""
    notes = {}
    for other in runs[1:]:
        why = _difference(runs[0], other)
        if why is None:
            continue
        message = (
            f"{other.path} ({other.label}) did not score the same test set as {runs[0].path} ({runs[0].label}): {why}"
        )
        if not allow:
            raise SplitMismatch(
                f"{message}. Compare runs of one config (same dataset, seed and splits), or pass "
                "--allow-different-splits to show them flagged"
            )
        notes[other.path] = message
    return notes
