"""A finished run directory read back as what a human looks at: headline numbers and image cards.

The HTML report, the run comparison and the notebook helpers all need the same answers to
"was this image right?", "how do I print this answer?" and "which filter tags does it carry?",
for all three output kinds. They get them here, from the files the run wrote
(``predictions.jsonl``, ``metrics.json``, ``failures.jsonl``, ``config.yaml``), so a report can
be rebuilt from the directory alone, long after the model is gone.

Filter tags make one filter work for every kind: a single-label answer is tagged with its label,
a multi-label answer with each of its labels, a multi-field answer with ``field=value`` per
field, and an invalid output with ``invalid``.

Example::

    view = load_run_view("runs/cats_vs_dogs-20250101-120000")
    wrong = [c for c in view.cards if not c.correct]
    view.counts()["n_failed"]
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vlmopt.metrics.classification import INVALID
from vlmopt.metrics.multifield import fields_correct
from vlmopt.metrics.multilabel import exact_match
from vlmopt.metrics.records import Answer, PredictionRecord
from vlmopt.reports.run_dir import ABSTENTION, CONFIG, METRICS, NotARunDir, RunDir

BASELINE_METRICS = "baseline_metrics.json"
PROMPT = "prompt.json"
TRIALS = "trials.json"
CALIBRATION = "calibration.json"
_KIND_OF_GOLD = {str: "single_label", list: "multi_label", dict: "multi_field"}


@dataclass(frozen=True)
class Metric:
    """A headline number: how to read it from metrics.json and which direction is better."""

    label: str
    get: Callable[[dict[str, Any]], Any]
    higher_is_better: bool | None


HEADLINE_METRICS = [
    Metric("accuracy", lambda m: m.get("accuracy"), True),
    Metric("macro-F1", lambda m: m.get("macro_f1"), True),
    Metric("Hamming score", lambda m: m.get("hamming"), True),
    Metric("mean field accuracy", lambda m: m.get("field_accuracy"), True),
    Metric("invalid rate", lambda m: m.get("invalid_rate"), False),
    Metric("ECE", lambda m: m.get("ece"), False),
    Metric("latency p50 (s)", lambda m: (m.get("latency") or {}).get("p50_s"), False),
    Metric("latency p95 (s)", lambda m: (m.get("latency") or {}).get("p95_s"), False),
    Metric("prompt tokens / image", lambda m: (m.get("tokens") or {}).get("prompt_mean"), False),
    Metric("images scored", lambda m: m.get("n"), None),
]
"""The metrics a report or notebook puts side by side, in display order (absent ones are skipped)."""


def answer_text(answer: Answer | None) -> str:
    """One line for a human: ``cat``; ``cat, indoor``; ``make: audi, year: 2012``; ``invalid``."""
    if answer is None:
        return INVALID
    if isinstance(answer, str):
        return answer
    if isinstance(answer, dict):
        return ", ".join(f"{k}: {v}" for k, v in answer.items())
    return ", ".join(sorted(set(answer))) or "(none)"


def answer_tags(answer: Answer | None) -> list[str]:
    """The filter tags of an answer (see the module docstring)."""
    if answer is None:
        return [INVALID]
    if isinstance(answer, str):
        return [answer]
    if isinstance(answer, dict):
        return [f"{k}={v}" for k, v in answer.items()]
    return sorted(set(answer))


def is_correct(record: PredictionRecord, output_kind: str) -> bool:
    """Whole-answer match, the same rule ``compute_metrics`` uses for ``accuracy``."""
    if output_kind == "multi_label":
        return exact_match(record.gold, record.predicted)
    if output_kind == "multi_field":
        return all(fields_correct(record.gold, record.predicted, list(record.gold)))
    return record.predicted == record.gold


def _is_image_data_uri(value: str | None) -> bool:
    # Only inline images go into a report: any other URL would make it fetch from the network.
    return bool(value) and value.startswith("data:image/")


@dataclass(frozen=True)
class Card:
    """One image as the report grid shows it."""

    id: str
    gold: str
    predicted: str
    gold_tags: list[str]
    pred_tags: list[str]
    correct: bool
    valid: bool
    confidence: float | None
    raw: str
    latency_s: float
    thumbnail: str | None
    image_ref: str | None
    abstained: bool = False

    @classmethod
    def of(cls, record: PredictionRecord, output_kind: str) -> Card:
        return cls(
            id=record.id,
            gold=answer_text(record.gold),
            predicted=answer_text(record.predicted),
            gold_tags=answer_tags(record.gold),
            pred_tags=answer_tags(record.predicted),
            correct=is_correct(record, output_kind),
            valid=record.valid,
            confidence=record.confidence,
            raw=record.raw,
            latency_s=record.latency_s,
            thumbnail=record.thumbnail if _is_image_data_uri(record.thumbnail) else None,
            image_ref=record.image_ref,
            abstained=record.abstained,
        )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def infer_output_kind(metrics: dict[str, Any], records: list[PredictionRecord]) -> str:
    """``metrics["output_kind"]``, else the shape of the gold answers, else single_label."""
    if metrics.get("output_kind"):
        return metrics["output_kind"]
    return _KIND_OF_GOLD[type(records[0].gold)] if records else "single_label"


def label_order(metrics: dict[str, Any], output_kind: str) -> list[str]:
    """Filter tags in the task's own label order (as the metrics list them)."""
    if output_kind == "multi_label":
        return list(metrics.get("per_label", {}))
    if output_kind == "multi_field":
        return [
            f"{name}={value}"
            for name, field in metrics.get("per_field", {}).items()
            for value in field["confusion"]["labels"]
        ]
    return list(metrics.get("confusion", {}).get("labels", []))


@dataclass
class RunView:
    """Everything a report shows about one run directory."""

    path: Path
    metrics: dict[str, Any]
    output_kind: str
    records: list[PredictionRecord]
    cards: list[Card]
    failures: list[dict[str, str]]
    config: dict[str, Any]
    baseline_metrics: dict[str, Any] | None
    prompt: Any | None
    demo_effect: dict[str, float] | None = None  # optimize runs: best val score per demo count
    calibration: dict[str, Any] | None = None  # optimize --calibrate: ReAnchor's weights, before/after
    abstention: dict[str, Any] | None = None  # optimize --target-accuracy / --coverage: abstention.json

    @property
    def name(self) -> str:
        return self.path.name

    def counts(self) -> dict[str, int]:
        """Scored, valid, invalid, failed (prediction errors) and skipped (unreadable) items.

        The pipeline writes ``n_failed`` / ``n_skipped`` into metrics.json; a run that stopped
        before that still has ``failures.jsonl``, which is counted by stage instead.
        """
        by_stage = {stage: sum(f.get("stage") == stage for f in self.failures) for stage in ("predict", "image")}
        n = len(self.cards)
        invalid = sum(not c.valid for c in self.cards)
        return {
            "n": self.metrics.get("n", n),
            "n_valid": self.metrics.get("n_valid", n - invalid),
            "n_invalid": self.metrics.get("n_invalid", invalid),
            "n_failed": self.metrics.get("n_failed", by_stage["predict"]),
            "n_skipped": self.metrics.get("n_skipped", by_stage["image"]),
        }

    def filter_options(self) -> tuple[list[str], list[str]]:
        """The gold and predicted tags that occur, in label order (unknown tags sorted after)."""
        order = label_order(self.metrics, self.output_kind)

        def ordered(seen: set[str]) -> list[str]:
            known = [t for t in order if t in seen]
            rest = sorted(seen - set(known) - {INVALID})
            return known + rest + ([INVALID] if INVALID in seen else [])

        gold = {t for c in self.cards for t in c.gold_tags}
        pred = {t for c in self.cards for t in c.pred_tags}
        return ordered(gold), ordered(pred)


def load_run_view(run_dir: str | Path) -> RunView:
    """Read a run directory; a missing ``metrics.json`` or ``predictions.jsonl`` is an error."""
    run = RunDir.open(run_dir)
    path = run.path
    records = run.predictions()
    if not records:
        raise NotARunDir(f"{path} has no predictions to show")
    metrics = _read_json(path / METRICS)
    kind = infer_output_kind(metrics, records)
    config_path = path / CONFIG
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    return RunView(
        path=path,
        metrics=metrics,
        output_kind=kind,
        records=records,
        cards=[Card.of(r, kind) for r in records],
        failures=run.failures(),
        config=config or {},
        baseline_metrics=_read_json(path / BASELINE_METRICS),
        prompt=_read_json(path / PROMPT),
        demo_effect=(_read_json(path / TRIALS) or {}).get("demo_effect"),
        calibration=_read_json(path / CALIBRATION),
        abstention=_read_json(path / ABSTENTION),
    )
