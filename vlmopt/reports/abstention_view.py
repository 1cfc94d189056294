"""The report's "Abstain when unsure" panel: the goal, the threshold, val and test at it, the curve.

Read from the run's files alone: ``abstention.json`` (optimize with ``optimizer.abstain``) and its
``risk_coverage.png``, inlined as a data URI so the report stays one self-contained file. A run
that only *replays* an abstaining artifact (``evaluate --artifact``) has no ``abstention.json``;
its metrics' ``selective`` block is shown in the headline counts instead.

Example::

    panel = abstention_view(load_run_view("runs/x"))   # None when the run did not choose a threshold
    panel["rows"][1]["split"], panel["rows"][1]["coverage"]
"""

from __future__ import annotations

import base64
from typing import Any

from vlmopt.reports.plots import RISK_COVERAGE_PNG
from vlmopt.reports.run_view import RunView


def _with_ci(value: float | None, ci: dict[str, Any] | None) -> dict[str, Any]:
    return {"value": value, "ci": f"{ci['low']:.3f}–{ci['high']:.3f}" if ci else ""}


def goal_text(goal: dict[str, float]) -> str:
    if "target_accuracy" in goal:
        return f"target accuracy {goal['target_accuracy']:g} on the answered images"
    return f"coverage {goal['coverage']:g} (answer that share of the images, the most sure first)"


def abstention_view(view: RunView) -> dict[str, Any] | None:
    """What the panel shows, or None when the run chose no threshold."""
    summary = view.abstention
    if not summary:
        return None
    rows = []
    for split in ("val", "test"):
        at = summary["at_threshold"][split]
        rows.append({
            "split": split, "n": at["n"], "n_abstained": at["n_abstained"], "n_answered": at["n_answered"],
            "coverage": _with_ci(at["coverage"], at["coverage_ci"]),
            "accuracy_answered": _with_ci(at["accuracy_answered"], at["accuracy_answered_ci"]),
            "accuracy_overall": _with_ci(at["accuracy_overall"], at["accuracy_overall_ci"]),
        })
    png = view.path / RISK_COVERAGE_PNG
    return {
        "goal": goal_text(summary["goal"]),
        "confidence": summary["confidence"],
        "threshold": summary["threshold"],
        "met_on_val": summary["val"]["met"],
        "rows": rows,
        "notes": summary.get("notes") or [],
        "plot": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() if png.is_file() else None,
    }
