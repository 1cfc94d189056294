"""The optimize command's closing table: baseline vs optimized on the untouched test split."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _acc(m: dict[str, Any]) -> str:
    ci = m.get("accuracy_ci") or {}
    interval = f" [{ci['low']:.3f}, {ci['high']:.3f}]" if "low" in ci else ""
    return f"{m['accuracy']:.3f}{interval}"


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


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
    for row, render in ROWS:
        table.add_row(row, *(render(metrics) for metrics in columns.values()))
    val_runs = [outcome.baseline["val"], *(None for _ in outcome.comparisons),
                *([outcome.argmax["val"]] if outcome.argmax else []), outcome.optimized["val"]]
    val_cells = ["-" if run is None else f"{run.metrics['accuracy']:.3f}" for run in val_runs]
    table.add_row("val accuracy (selected / fitted on)", *val_cells)
    return table
