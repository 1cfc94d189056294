"""PNG plots of a metrics summary: confusion matrix, reliability diagram, risk-coverage curve.

They take the JSON shapes that :func:`~vlmopt.metrics.summary.compute_metrics` writes
(``metrics["confusion"]``, ``metrics["calibration"]``) or that optimize writes
(``abstention.json``), so a report can redraw them from the run's files alone. Figures are
drawn on matplotlib's Agg canvas without pyplot: no global figure state, no display needed,
safe from worker threads. The PNG is exactly
``figsize * dpi`` pixels (no tight bounding box), so reports can lay them out predictably.

Example::

    plot_confusion_matrix(metrics["confusion"], run_dir / "confusion.png")
    if metrics["calibration"]["n"]:
        plot_reliability(metrics["calibration"], run_dir / "reliability.png")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vlmopt.metrics.classification import INVALID

# Above this many classes the per-cell counts are unreadable; the colours still tell the story.
_MAX_ANNOTATED = 30


def _figure(figsize: tuple[float, float], dpi: int) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, dpi: int) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def plot_confusion_matrix(
    confusion: Mapping[str, Any],
    path: str | Path,
    *,
    title: str = "Confusion matrix",
    figsize: tuple[float, float] | None = None,
    dpi: int = 100,
) -> Path:
    """Draw ``{"labels", "matrix"[, "columns"]}`` (rows = gold) to a PNG at ``path``.

    Cell colour is the row fraction (per-class recall on the diagonal), so a small class's
    mistakes are as visible as a large one's; cells show raw counts. The last column is the
    ``invalid`` outputs. Default size grows with the number of classes.
    """
    labels = list(confusion["labels"])
    columns = list(confusion.get("columns", [*labels, INVALID]))
    counts = np.asarray(confusion["matrix"], dtype=float)
    if counts.shape != (len(labels), len(columns)):
        raise ValueError(f"matrix shape {counts.shape} does not match {len(labels)} labels x {len(columns)} columns")
    row_totals = counts.sum(axis=1, keepdims=True)
    fraction = np.divide(counts, row_totals, out=np.zeros_like(counts), where=row_totals > 0)

    side = min(30.0, max(4.0, 0.45 * len(columns) + 2.5))
    fig = _figure(figsize or (side + 1.0, side), dpi)
    ax = fig.add_subplot()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, label="fraction of gold row")
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    if len(columns) <= _MAX_ANNOTATED:
        for (row, col), count in np.ndenumerate(counts):
            colour = "white" if fraction[row, col] > 0.5 else "black"
            ax.text(col, row, f"{int(count)}", ha="center", va="center", color=colour, fontsize=8)
    return _save(fig, path, dpi)


def plot_reliability(
    calibration: Mapping[str, Any],
    path: str | Path,
    *,
    title: str = "Reliability",
    figsize: tuple[float, float] = (5.0, 5.0),
    dpi: int = 100,
) -> Path:
    """Draw a reliability diagram from ``{"bins", "ece", "n"}`` to a PNG at ``path``.

    Bars are the accuracy per confidence bin against the diagonal of perfect calibration; the
    grey line is how many answers fell in each bin. Raises ValueError when no answer had a
    confidence (``calibration["n"] == 0``): there is nothing to draw.
    """
    if not calibration.get("n"):
        raise ValueError("no confidences were recorded; a reliability diagram needs them")
    bins = calibration["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    accuracy = np.array([b["accuracy"] if b["accuracy"] is not None else 0.0 for b in bins])
    counts = np.array([b["count"] for b in bins])

    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    ax.bar(lower, accuracy, width=width, align="edge", edgecolor="black", color="tab:blue", label="accuracy")
    ax.plot([0, 1], [0, 1], linestyle="--", color="tab:red", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ece = calibration.get("ece")
    ax.set_title(f"{title} (ECE {ece:.3f}, n={calibration['n']})" if ece is not None else title)
    ax.legend(loc="upper left")
    share = ax.twinx()
    share.plot(lower + width / 2, counts, color="grey", marker="o", linewidth=1)
    share.set_ylabel("answers in bin", color="grey")
    share.set_ylim(0, max(1, counts.max()) * 1.1)
    return _save(fig, path, dpi)


RISK_COVERAGE_PNG = "risk_coverage.png"
_SPLIT_COLOURS = {"val": "tab:blue", "test": "tab:orange"}


def plot_risk_coverage(
    abstention: Mapping[str, Any],
    path: str | Path,
    *,
    title: str = "Risk-coverage",
    figsize: tuple[float, float] = (6.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Accuracy on the answered against coverage, val and test, from ``abstention.json``'s content.

    Each split's curve is its ``curves[split]`` (one point per distinct confidence); the point
    the threshold gives on that split (``at_threshold[split]``) is marked, and the goal is drawn as a dashed line (the
    target accuracy, or the target coverage).
    """
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    for split, colour in _SPLIT_COLOURS.items():
        points = abstention["curves"][split]
        if points:
            ax.step([p["coverage"] for p in points], [p["accuracy"] for p in points], where="post",
                    color=colour, label=f"{split} (n={abstention['at_threshold'][split]['n']})")
        at = abstention["at_threshold"][split]
        if at["accuracy_answered"] is not None:
            ax.plot([at["coverage"]], [at["accuracy_answered"]], marker="o", markersize=8, color=colour,
                    markeredgecolor="black", linestyle="none")
    goal = abstention["goal"]
    ((name, value),) = goal.items()
    line = ax.axhline if name == "target_accuracy" else ax.axvline
    line(value, linestyle="--", color="grey", label=f"{name.replace('_', ' ')} {value:g}")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy on the answered")
    ax.set_title(f"{title}: {abstention['confidence']} >= {abstention['threshold']:.4g} (dots)")
    ax.legend(loc="lower left")
    return _save(fig, path, dpi)
