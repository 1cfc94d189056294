"""Self-contained HTML reports of a run directory, and of two runs side by side.

A report is one file that opens from disk with no network: styles and the small filter script
are inline, images are the thumbnails the run stored as data URIs, and nothing else is linked
(a URL that is not a ``data:image/`` URI is shown as text, never fetched). That is what lets a
report be mailed, attached to a ticket or opened on an air-gapped host.

The grid's cards carry their facts as data attributes, so the filters (and tests) work on them:
``data-id``, ``data-correct`` and ``data-valid`` (``0``/``1``), ``data-gold`` / ``data-pred`` (the
answer as text, ``invalid`` for an invalid output), ``data-gold-tags`` / ``data-pred-tags`` (JSON
lists, see :mod:`vlmopt.reports.run_view`) and ``data-confidence`` (empty when unknown).

Example::

    write_report("runs/cats_vs_dogs-20250101-120000")          # -> .../report.html
    compare_runs("runs/baseline-...", "runs/optimized-...")     # -> runs/optimized-.../compare-baseline-....html
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from vlmopt.metrics.classification import INVALID
from vlmopt.reports.abstention_view import abstention_view
from vlmopt.reports.run_view import HEADLINE_METRICS, RunView, load_run_view

REPORT = "report.html"

_env = Environment(
    loader=PackageLoader("vlmopt.reports", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    # Token counts and other large means read better without three decimals.
    return f"{value:.{1 if abs(value) >= 100 else digits}f}"


_env.filters["num"] = _num


def _ci(metrics: dict[str, Any]) -> str:
    ci = metrics.get("accuracy_ci")
    if not ci or ci.get("low") is None:
        return ""
    return f"{round(ci['level'] * 100)}% CI {ci['low']:.3f}–{ci['high']:.3f}"


def metric_rows(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Metrics of two runs side by side with the change, skipping metrics neither run has.

    ``good`` says whether the change is an improvement (None: no direction, or no change).
    """
    rows = []
    for metric in HEADLINE_METRICS:
        va, vb = metric.get(a), metric.get(b)
        if va is None and vb is None:
            continue
        delta = vb - va if va is not None and vb is not None else None
        good = None if not delta or metric.higher_is_better is None else (delta > 0) == metric.higher_is_better
        rows.append(
            {
                "label": metric.label,
                "a": va,
                "b": vb,
                "delta": delta,
                "good": good,
                "a_ci": _ci(a) if metric.label == "accuracy" else "",
                "b_ci": _ci(b) if metric.label == "accuracy" else "",
            }
        )
    return rows


def confusion_view(confusion: dict[str, Any], tag_prefix: str = "") -> dict[str, Any]:
    """A confusion matrix as table rows whose cells know their share of the gold row and the
    filter tags to select when clicked."""
    labels = confusion["labels"]
    columns = confusion.get("columns", [*labels, INVALID])
    rows = []
    for label, counts in zip(labels, confusion["matrix"], strict=True):
        total = sum(counts)
        cells = [
            {
                "count": count,
                "share": count / total if total else 0.0,
                "gold": tag_prefix + label,
                "pred": INVALID if column == INVALID else tag_prefix + column,
                "diagonal": column == label,
                "invalid": column == INVALID,
            }
            for column, count in zip(columns, counts, strict=True)
        ]
        rows.append({"label": label, "cells": cells, "total": total})
    return {"columns": columns, "rows": rows}


def _class_tables(view: RunView) -> list[dict[str, Any]]:
    """Per-class tables (and confusion matrices where the kind has them), titled."""
    m = view.metrics
    if view.output_kind == "multi_label":
        per_label = m.get("per_label", {})
        return [{"title": "Per label", "what": "label", "per_class": per_label, "confusion": None, "summary": None}]
    if view.output_kind == "multi_field":
        return [
            {
                "title": f"Field “{name}”",
                "what": "value",
                "per_class": field["per_class"],
                "confusion": confusion_view(field["confusion"], tag_prefix=f"{name}="),
                "summary": field,
            }
            for name, field in m.get("per_field", {}).items()
        ]
    confusion = m.get("confusion")
    return [
        {
            "title": "Per class",
            "what": "class",
            "per_class": m.get("per_class", {}),
            "confusion": confusion_view(confusion) if confusion else None,
            "summary": None,
        }
    ]


def _shorten_data_uris(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("data:") and len(value) > 80:
        return f"{value[:40]}… ({len(value)} characters)"
    if isinstance(value, list):
        return [_shorten_data_uris(v) for v in value]
    if isinstance(value, dict):
        return {k: _shorten_data_uris(v) for k, v in value.items()}
    return value


def _message_parts(content: Any) -> list[dict[str, str]]:
    """Chat content (a string or OpenAI-style parts) as text and inline-image parts."""
    if isinstance(content, str):
        return [{"kind": "text", "text": content}]
    parts = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, dict) and part.get("type") == "text":
            parts.append({"kind": "text", "text": str(part.get("text", ""))})
            continue
        url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
        if isinstance(url, str) and url.startswith("data:image/"):
            parts.append({"kind": "image", "src": url})
        else:
            parts.append({"kind": "text", "text": json.dumps(_shorten_data_uris(part), ensure_ascii=False)})
    return parts


def prompt_view(prompt: Any) -> dict[str, Any] | None:
    """The compiled prompt as chat messages (demo images inline) plus its other keys as JSON."""
    if prompt is None:
        return None
    messages = prompt.get("messages") if isinstance(prompt, dict) else None
    if not isinstance(messages, list):
        return {"messages": [], "extra": json.dumps(_shorten_data_uris(prompt), indent=2, ensure_ascii=False)}
    rest = {k: v for k, v in prompt.items() if k != "messages"}
    return {
        "messages": [
            {"role": str(m.get("role", "?")), "parts": _message_parts(m.get("content", ""))}
            for m in messages
            if isinstance(m, dict)
        ],
        "extra": json.dumps(_shorten_data_uris(rest), indent=2, ensure_ascii=False) if rest else "",
    }


def _header(view: RunView) -> dict[str, Any]:
    cfg = view.config
    return {
        "title": cfg.get("name") or view.name,
        "run": view.name,
        "model": (cfg.get("model") or {}).get("id"),
        "backend": (cfg.get("backend") or {}).get("kind"),
        "output_kind": view.output_kind,
        "split": view.metrics.get("split"),
        "split_sizes": view.metrics.get("split_sizes") or {},
    }


def render_report(view: RunView) -> str:
    """The report page of one run as an HTML string."""
    gold_options, pred_options = view.filter_options()
    return _env.get_template("report.html.j2").render(
        header=_header(view),
        metrics=view.metrics,
        accuracy_ci=_ci(view.metrics),
        counts=view.counts(),
        class_tables=_class_tables(view),
        cards=view.cards,
        failures=view.failures,
        gold_options=gold_options,
        pred_options=pred_options,
        baseline=metric_rows(view.baseline_metrics, view.metrics) if view.baseline_metrics else None,
        prompt=prompt_view(view.prompt),
        demo_effect=view.demo_effect,
        calibration=view.calibration,
        abstention=abstention_view(view),
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.html`` into the run directory and return its path."""
    view = load_run_view(run_dir)
    out = view.path / REPORT
    out.write_text(render_report(view), encoding="utf-8")
    return out


def flips(a: RunView, b: RunView) -> dict[str, Any]:
    """Images in both runs (matched by id) whose verdict changed, and ids only one run has."""
    cards_a = {c.id: c for c in a.cards}
    cards_b = {c.id: c for c in b.cards}
    shared = [i for i in cards_b if i in cards_a]

    def pairs(was: bool) -> list[dict[str, Any]]:
        return [
            {"a": cards_a[i], "b": cards_b[i]}
            for i in shared
            if cards_a[i].correct == was and cards_b[i].correct != was
        ]

    return {
        "right_to_wrong": pairs(True),
        "wrong_to_right": pairs(False),
        "n_shared": len(shared),
        "only_a": sorted(set(cards_a) - set(cards_b)),
        "only_b": sorted(set(cards_b) - set(cards_a)),
    }


def compare_runs(run_a: str | Path, run_b: str | Path, out: str | Path | None = None) -> Path:
    """Write a page comparing run A (before) with run B (after); return its path.

    Default location: ``<run_b>/compare-<run_a name>.html``.
    """
    a, b = load_run_view(run_a), load_run_view(run_b)
    path = Path(out) if out is not None else b.path / f"compare-{a.name}.html"
    html = _env.get_template("compare.html.j2").render(
        a=_header(a), b=_header(b), rows=metric_rows(a.metrics, b.metrics), flips=flips(a, b)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path
