"""The comparison of many runs as the team reads it: a rich table, ``comparison.html``, ``.csv`` and ``.md``.

One list of columns (:data:`COLUMNS`) feeds every form, so the terminal, the page, the spreadsheet
and the pasted markdown never disagree: the CSV holds the raw numbers (a blank where unknown), the
others the same numbers formatted.

Example::

    runs = collect_runs(paths)
    notes = check_same_test_set(runs)
    Console().print(rich_table(runs, notes))
    write_comparison(runs, notes, "runs/comparison-20250101-120000")   # -> {"html": ..., "csv": ..., "md": ...}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from rich import box
from rich.table import Table

from vlmopt.reports.run_comparison import ComparedRun


def _ci(run: ComparedRun, end: str) -> float | None:
    return (run.metrics.get("accuracy_ci") or {}).get(end)


def _count(value: float) -> str:
    """Parameters and calls as people say them: 86.2M, 24.5k, 312."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}"
    return f"{value:.0f}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def _model_name(model: str | None) -> str | None:
    """A hub id as given; a local model directory by its folder name (the full path is in the run's config)."""
    if model is None:
        return None
    return Path(model).name if Path(model).expanduser().is_dir() else model


def _accuracy(run: ComparedRun) -> str:
    low, high = _ci(run, "low"), _ci(run, "high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{run.metrics['accuracy']:.3f}{interval}"


@dataclass(frozen=True)
class Column:
    """A column: its header, its raw value (CSV), and how it reads (table, page, markdown)."""

    header: str
    key: str  # the CSV's column name
    value: Callable[[ComparedRun], Any]
    text: Callable[[ComparedRun], str] | None = None  # default: the value with ``fmt``
    fmt: str | Callable[[Any], str] = "{}"


def _formatted(column: Column, run: ComparedRun) -> str:
    if column.text is not None:
        return column.text(run)
    value = column.value(run)
    if value is None:
        return "-"
    return column.fmt(value) if callable(column.fmt) else column.fmt.format(value)


COLUMNS = (
    Column("run", "run", lambda r: r.label),
    Column("model", "model", lambda r: _model_name(r.model)),
    Column("n", "n", lambda r: r.metrics["n"]),
    Column("accuracy", "accuracy", lambda r: r.metrics["accuracy"], _accuracy),
    Column("F1", "macro_f1", lambda r: r.metrics.get("macro_f1"), fmt="{:.3f}"),
    Column("ECE", "ece", lambda r: r.metrics.get("ece"), fmt="{:.3f}"),
    Column("ms/img", "latency_ms_per_image", lambda r: r.latency_ms_per_image, fmt="{:.1f}"),
    Column("params", "parameters", lambda r: r.parameters, fmt=_count),
    Column("calls", "model_calls", lambda r: r.metrics.get("model_calls"), fmt=_count),
    Column("wall", "wall_s", lambda r: r.metrics.get("wall_s"), fmt=_seconds),
    Column("path", "path", lambda r: str(r.path)),
)
CSV_EXTRA = {
    "accuracy_ci_low": lambda r: _ci(r, "low"),
    "accuracy_ci_high": lambda r: _ci(r, "high"),
    "method": lambda r: r.method,
    "split": lambda r: r.split,
    "split_fingerprint": lambda r: r.fingerprint,
}
CAPTION = (
    "same test images in every row · accuracy [95% bootstrap interval] · F1: macro-F1 · ms/img: per "
    "image of a batch for CLIP-style models, per request (several in flight) for VLMs · params: what "
    "inference runs · calls and wall: the whole run (search or training, and scoring) · '-': not recorded"
)


def _flag(run: ComparedRun, notes: dict[Path, str]) -> str:
    return " (!)" if run.path in notes else ""


def rich_table(runs: list[ComparedRun], notes: dict[Path, str] | None = None) -> Table:
    """The terminal table (model and path are in the files); flagged rows end in ``(!)``."""
    notes = notes or {}
    table = Table(title="test split: every classifier on the same images", caption=CAPTION, box=box.SIMPLE_HEAD)
    shown = [c for c in COLUMNS if c.header not in ("model", "path")]
    for column in shown:  # a narrow terminal folds names (never cuts them); the interval takes a second line
        table.add_column(column.header, justify="left" if column.header == "run" else "right", overflow="fold")
    for run in runs:
        cells = [_formatted(c, run).replace(" [", "\n[") for c in shown]
        table.add_row(cells[0] + _flag(run, notes), *cells[1:])
    return table


def comparison_frame(runs: list[ComparedRun]) -> pd.DataFrame:
    """The raw numbers, one row per run (the CSV)."""
    columns = {c.key: c.value for c in COLUMNS} | CSV_EXTRA
    return pd.DataFrame([{name: get(run) for name, get in columns.items()} for run in runs])


def markdown_table(runs: list[ComparedRun], notes: dict[Path, str] | None = None) -> str:
    """A GitHub pipe table of the formatted cells (``|`` in a cell escaped)."""
    notes = notes or {}
    rows = [[c.header for c in COLUMNS]]
    rows += [[_formatted(c, run) + (_flag(run, notes) if c.header == "run" else "") for c in COLUMNS] for run in runs]
    lines = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in COLUMNS) + "|")
    notes_text = "".join(f"\n(!) {note}" for note in notes.values())
    return "\n".join(lines) + f"\n\n{CAPTION}{notes_text}\n"


_env = Environment(loader=PackageLoader("vlmopt.reports", "templates"), autoescape=True, undefined=StrictUndefined)


def comparison_html(runs: list[ComparedRun], notes: dict[Path, str] | None = None) -> str:
    notes = notes or {}
    rows = [{"cells": [_formatted(c, run) for c in COLUMNS], "flagged": run.path in notes} for run in runs]
    return _env.get_template("comparison.html.j2").render(
        headers=[c.header for c in COLUMNS], rows=rows, caption=CAPTION, notes=list(notes.values())
    )


def write_comparison(runs: list[ComparedRun], notes: dict[Path, str], out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.html``, ``comparison.csv`` and ``comparison.md`` into ``out_dir``; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"comparison.{kind}" for kind in ("html", "csv", "md")}
    paths["html"].write_text(comparison_html(runs, notes), encoding="utf-8")
    comparison_frame(runs).to_csv(paths["csv"], index=False)
    paths["md"].write_text(markdown_table(runs, notes), encoding="utf-8")
    return paths
