"""The optimize command's closing table: baseline vs optimized on the untouched test split."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _with_ci(value: float, ci: dict[str, Any] | None) -> str:
    interval = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if ci and "low" in ci else ""
    return f"{value:.3f}{interval}"


def _acc(m: dict[str, Any]) -> str:
    return _with_ci(m["accuracy"], m.get("accuracy_ci"))


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _selective(m: dict[str, Any], key: str) -> str:
    """A program that abstains: the figure with its interval; one that answers everything: '-'."""
    selective = m.get("selective")
    if not selective or selective[key] is None:
        return "-"
    return _with_ci(selective[key], selective[f"{key}_ci"])


ROWS = (
    ("accuracy (95% CI)", _acc),
    ("macro-F1", lambda m: _num(m.get("macro_f1"), ".3f")),
    ("invalid rate", lambda m: _num(m.get("invalid_rate"), ".1%")),
    ("latency p50 / image", lambda m: _num((m.get("latency") or {}).get("p50_s"), ".3f") + " s"),
    ("prompt tokens / image", lambda m: _num((m.get("tokens") or {}).get("prompt_mean"), ".0f")),
    ("completion tokens / image", lambda m: _num((m.get("tokens") or {}).get("completion_mean"), ".1f")),
    ("ECE (confidence calibration)", lambda m: _num(m.get("ece"), ".3f")),
    ("Brier score", lambda m: _num((m.get("calibration") or {}).get("brier"), ".3f")),
)

SELECTIVE_ROWS = (
    ("coverage, abstaining (95% CI)", lambda m: _selective(m, "coverage")),
    ("accuracy on answered (95% CI)", lambda m: _selective(m, "accuracy_answered")),
)
"""Shown when a program abstains (``optimizer.abstain``); accuracy above scores every image's top label."""


def comparison_table(outcome) -> Table:
    """Baseline (the config's prompt), comparison optimizers and MIPROv2's program, all on test.

    When ReAnchor's decision weights were kept, the optimized program's plain-argmax decision
    stands beside the calibrated one (``optimized, argmax``) so its effect reads directly.
    """
    columns = {"baseline": outcome.baseline["test"].metrics}
    columns.update({name: run.metrics for name, run in outcome.comparisons.items()})
    if outcome.argmax:
        columns["optimized, argmax"] = outcome.argmax["test"].metrics
    columns["optimized + ReAnchor" if outcome.argmax else "optimized"] = outcome.optimized["test"].metrics
    sizes = outcome.optimized["test"].metrics.get("split_sizes") or {}
    caption = ", ".join(f"{k} {v}" for k, v in sizes.items())
    table = Table(title="test split: baseline vs optimized", caption=f"split sizes: {caption}" if caption else None)
    table.add_column("metric")
    for name, metrics in columns.items():
        table.add_column(f"{name} (n={metrics['n']})", justify="right")
    abstains = any("selective" in metrics for metrics in columns.values())
    for row, render in (*ROWS, *(SELECTIVE_ROWS if abstains else ())):
        table.add_row(row, *(render(metrics) for metrics in columns.values()))
    val_runs = [outcome.baseline["val"], *(None for _ in outcome.comparisons),
                *([outcome.argmax["val"]] if outcome.argmax else []), outcome.optimized["val"]]
    val_cells = ["-" if run is None else f"{run.metrics['accuracy']:.3f}" for run in val_runs]
    table.add_row("val accuracy (selected / fitted on)", *val_cells)
    return table
