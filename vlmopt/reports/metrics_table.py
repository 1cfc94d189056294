"""The end-of-run table the CLI prints: a rich ``Table`` built from a metrics summary.

Rows appear only for what the summary holds (macro-F1 for labels, Hamming for multi-label,
per-field accuracy for multi-field, calibration only when confidences were recorded), so one
builder serves every output kind.

Example::

    rich.console.Console().print(summary_table(metrics, title="test split"))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.table import Table


def _interval(ci: Mapping[str, Any] | None) -> str:
    if not ci:
        return ""
    return f"{ci['level']:.0%} CI [{ci['low']:.3f}, {ci['high']:.3f}]"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _tokens(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def summary_table(metrics: Mapping[str, Any], *, title: str = "Metrics") -> Table:
    """A (metric, value, detail) table of a :func:`~vlmopt.metrics.summary.compute_metrics` summary."""
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("detail", style="dim")

    counts = f"{metrics['n_valid']} valid, {metrics['n_invalid']} invalid ({metrics['invalid_rate']:.1%})"
    table.add_row("examples", str(metrics["n"]), counts)
    accuracy_name = "accuracy" if metrics["output_kind"] == "single_label" else "exact match"
    table.add_row(accuracy_name, f"{metrics['accuracy']:.3f}", _interval(metrics.get("accuracy_ci")))
    if "macro_f1" in metrics:
        table.add_row("macro-F1", f"{metrics['macro_f1']:.3f}", "")
    if "hamming" in metrics:
        table.add_row("Hamming score", f"{metrics['hamming']:.3f}", _interval(metrics.get("hamming_ci")))
    if "field_accuracy" in metrics:
        table.add_row("field accuracy (mean)", f"{metrics['field_accuracy']:.3f}", "")
        for name, scores in metrics["per_field"].items():
            table.add_row(f"  {name}", f"{scores['accuracy']:.3f}", f"macro-F1 {scores['macro_f1']:.3f}")

    selective = metrics.get("selective")
    if selective:
        rule = f"{selective['confidence']} < {selective['threshold']:.4g}"
        table.add_row("coverage (answered)", f"{selective['coverage']:.3f}",
                      f"{selective['n_abstained']} abstained ({rule}); {_interval(selective['coverage_ci'])}")
        answered = selective["accuracy_answered"]
        table.add_row("accuracy on answered", "n/a" if answered is None else f"{answered:.3f}",
                      _interval(selective["accuracy_answered_ci"]))
    other = metrics.get("other")
    if other:
        table.add_row(f"answered {other['label']!r} (other)", str(other["n_answered"]),
                      f"{other['n_gold']} gold; precision {other['precision']:.3f}, recall {other['recall']:.3f}")

    calibration = metrics.get("calibration") or {}
    if calibration.get("n"):
        table.add_row("ECE", f"{calibration['ece']:.3f}", f"{calibration['n']} answers, {calibration['n_bins']} bins")
    if calibration.get("brier") is not None:
        table.add_row("Brier score", f"{calibration['brier']:.3f}", f"{calibration['n_brier']} answers")

    latency = metrics["latency"]
    table.add_row("latency p50", _seconds(latency["p50_s"]), f"p95 {_seconds(latency['p95_s'])}")
    tokens = metrics["tokens"]
    table.add_row(
        "tokens / image",
        f"{_tokens(tokens['prompt_mean'])} + {_tokens(tokens['completion_mean'])}",
        "prompt + completion",
    )
    return table
