"""Notebook helpers: a run directory as a DataFrame, its metrics as a table, its images as a grid.

Made for ``notebooks/inspect_eval.ipynb`` and ad-hoc digging after ``vlmopt evaluate``: the
numbers are the ones ``metrics.json`` holds and the right / wrong verdicts are the report's (see
:mod:`vlmopt.reports.run_view`), so a notebook never disagrees with the HTML report. Figures are
plain matplotlib ``Figure`` objects (no pyplot state); Jupyter shows one when it is the cell's
value.

Example::

    run = resolve_run_dir()                      # $VLMOPT_RUN_DIR or the newest run under runs/
    metrics_table(run)
    df = load_run(run)
    df[~df.correct][["id", "gold", "predicted", "confidence", "raw"]]
    show_grid(df, only_misclassified=True)
"""

from __future__ import annotations

import base64
import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from vlmopt.reports.plots import plot_confusion_matrix
from vlmopt.reports.run_dir import METRICS
from vlmopt.reports.run_view import HEADLINE_METRICS, load_run_view

RUN_DIR_ENV = "VLMOPT_RUN_DIR"
_COLOURS = {"correct": "#15803d", "wrong": "#b91c1c", "invalid": "#b45309"}


def resolve_run_dir(run_dir: str | Path | None = None, runs_root: str | Path | None = None) -> Path:
    """``run_dir``, else ``$VLMOPT_RUN_DIR``, else the most recently written run under ``runs_root``.

    ``runs_root`` defaults to ``runs/`` here or one level up (a notebook runs from
    ``notebooks/``). Raises FileNotFoundError naming where it looked.
    """
    chosen = run_dir or os.environ.get(RUN_DIR_ENV)
    if chosen:
        return Path(chosen)
    roots = [Path(runs_root)] if runs_root else [Path("runs"), Path("../runs")]
    runs = [d for root in roots if root.is_dir() for d in root.iterdir() if (d / METRICS).exists()]
    if not runs:
        raise FileNotFoundError(
            f"no finished run under {[str(r) for r in roots]}; run `vlmopt evaluate` or set {RUN_DIR_ENV}"
        )
    return max(runs, key=lambda d: (d / METRICS).stat().st_mtime)


def load_run(run_dir: str | Path) -> pd.DataFrame:
    """One row per prediction: the record's fields plus ``correct``, answers as text
    (``gold``, ``predicted``: ``invalid`` for an invalid output), the raw answers
    (``gold_value``, ``predicted_value``) and filter tags (``gold_tags``, ``pred_tags``)."""
    view = load_run_view(run_dir)
    rows = []
    for record, card in zip(view.records, view.cards, strict=True):
        rows.append(
            {
                "id": record.id,
                "gold": card.gold,
                "predicted": card.predicted,
                "correct": card.correct,
                "valid": record.valid,
                "confidence": record.confidence,
                "raw": record.raw,
                "latency_s": record.latency_s,
                "prompt_tokens": record.prompt_tokens,
                "completion_tokens": record.completion_tokens,
                "gold_value": record.gold,
                "predicted_value": record.predicted,
                "gold_tags": card.gold_tags,
                "pred_tags": card.pred_tags,
                "image_ref": record.image_ref,
                "thumbnail": record.thumbnail,
            }
        )
    return pd.DataFrame(rows)


def metrics_table(run_dir: str | Path) -> pd.DataFrame:
    """Headline metrics and sample counts of a run, one row each (column ``value``)."""
    view = load_run_view(run_dir)
    m = view.metrics
    values: dict[str, object] = {}
    for metric in HEADLINE_METRICS:
        value = metric.get(m)
        if value is not None:
            values[metric.label] = value
        if metric.label == "accuracy" and m.get("accuracy_ci"):
            ci = m["accuracy_ci"]
            values[f"accuracy {round(ci['level'] * 100)}% CI"] = f"{ci['low']:.3f} – {ci['high']:.3f}"
    counts = view.counts()
    values.update(
        {
            "images scored": counts["n"],
            "valid outputs": counts["n_valid"],
            "invalid outputs": counts["n_invalid"],
            "failed (not predicted)": counts["n_failed"],
            "skipped (unreadable)": counts["n_skipped"],
        }
    )
    if m.get("split"):
        values["split"] = m["split"]
    for name, size in (m.get("split_sizes") or {}).items():
        values[f"split size {name}"] = size
    return pd.DataFrame({"value": pd.Series(values, dtype=object)})


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _decode(data_uri: str | None) -> np.ndarray | None:
    if not data_uri or not data_uri.startswith("data:image/"):
        return None
    payload = data_uri.split(",", 1)[1]
    with Image.open(io.BytesIO(base64.b64decode(payload))) as img:
        return np.asarray(img.convert("RGB"))


def show_grid(
    run_or_df: str | Path | pd.DataFrame,
    *,
    only_misclassified: bool = False,
    gold: str | None = None,
    predicted: str | None = None,
    n: int = 24,
    cols: int = 6,
) -> Figure:
    """Thumbnails with gold / predicted titles: green when right, red when wrong, amber when invalid.

    ``gold`` / ``predicted`` select a label (or ``field=value`` for multi-field runs, or
    ``invalid``); the first ``n`` matching images are drawn.
    """
    df = run_or_df if isinstance(run_or_df, pd.DataFrame) else load_run(run_or_df)
    if only_misclassified:
        df = df[~df["correct"]]
    if gold is not None:
        df = df[df["gold_tags"].apply(lambda tags: gold in tags)]
    if predicted is not None:
        df = df[df["pred_tags"].apply(lambda tags: predicted in tags)]
    df = df.head(n)
    if df.empty:
        fig = _figure(4, 1)
        fig.text(0.5, 0.5, "no images match", ha="center", va="center")
        return fig
    cols = max(1, min(cols, len(df)))
    rows = math.ceil(len(df) / cols)
    fig = _figure(2.1 * cols, 2.5 * rows)
    for position, row in enumerate(df.itertuples(index=False)):
        ax = fig.add_subplot(rows, cols, position + 1)
        pixels = _decode(row.thumbnail)
        if pixels is not None:
            ax.imshow(pixels)
        verdict = "correct" if row.correct else ("wrong" if row.valid else "invalid")
        ax.set_title(f"{row.id}\ngold: {row.gold}\npred: {row.predicted}", color=_COLOURS[verdict], fontsize=8)
        ax.set_axis_off()
    return fig


def show_confusion(run_dir: str | Path, field: str | None = None) -> Figure:
    """The run's confusion matrix (a multi-field run: the matrix of ``field``) as a figure.

    Drawn by :func:`vlmopt.reports.plots.plot_confusion_matrix` from metrics.json, so it is the same
    picture as the run's ``confusion.png``. Multi-label runs have no confusion matrix (a
    ValueError says so).
    """
    metrics = load_run_view(run_dir).metrics
    if field is not None:
        fields = metrics.get("per_field") or {}
        if field not in fields:
            raise ValueError(f"no field {field!r} in this run; fields: {sorted(fields)}")
        confusion, title = fields[field]["confusion"], f"Confusion matrix: {field}"
    elif "confusion" in metrics:
        confusion, title = metrics["confusion"], "Confusion matrix"
    else:
        hint = f" (pass field=, one of {sorted(metrics['per_field'])})" if "per_field" in metrics else ""
        raise ValueError(f"this {metrics.get('output_kind', '')} run has no single confusion matrix{hint}")
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_confusion_matrix(confusion, Path(tmp) / "confusion.png", title=title)
        with Image.open(png) as img:
            pixels = np.asarray(img.convert("RGB"))
    height, width = pixels.shape[:2]
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(pixels)
    ax.set_axis_off()
    return fig
