"""The ``optimize --compare`` table: each search method beside the baseline, on the untouched test split.

One column per method (the winner on val marked), the config's prompt as the baseline, and the
cost of each search — the task-model calls it asked for (the budget's unit), those that reached
the model (the rest replayed from DSPy's cache) and its wall time.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from vlmopt.reports.comparison_table import ROWS


def _calls(calls: dict[str, Any] | None, key: str) -> str:
    value = (calls or {}).get(key)
    return "-" if value is None else str(value)


def method_table(outcome) -> Table:
    """Baseline and every compared method on test; val accuracy (what chose the winner) and cost below."""
    runs = outcome.methods
    table = Table(title="test split: search methods compared (the winner on val is the artifact)")
    table.add_column("metric")
    baseline = outcome.baseline["test"].metrics
    table.add_column(f"baseline (n={baseline['n']})", justify="right")
    for name, run in runs.items():
        mark = " *" if name == outcome.method else ""
        table.add_column(f"{name}{mark} (n={run.test.metrics['n']})", justify="right")
    for row, render in ROWS[:3]:  # accuracy with its interval, macro-F1, invalid rate
        table.add_row(row, render(baseline), *(render(run.test.metrics) for run in runs.values()))
    table.add_row(
        "val accuracy (selected on)",
        f"{outcome.baseline['val'].metrics['accuracy']:.3f}",
        *(f"{run.val.metrics['accuracy']:.3f}" for run in runs.values()),
    )
    table.add_row("model calls asked (budget unit)", "-", *(_calls(run.calls, "asked") for run in runs.values()))
    table.add_row("task-model calls reached", "-", *(_calls(run.calls, "reached_task") for run in runs.values()))
    table.add_row("wall time of the search", "-", *(f"{run.calls['wall_s']:.1f} s" for run in runs.values()))
    table.caption = "* the winner on val; a call one method made replays from the cache for the next"
    return table
