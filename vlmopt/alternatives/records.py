"""From a matrix of label probabilities to the prediction rows and ``metrics.json`` every run writes.

A baseline's run directory is read by the same report, notebook helpers and comparison as a VLM
run's, so its rows are ordinary :class:`~vlmopt.metrics.records.PredictionRecord`s: the argmax
label, the whole distribution (so ECE and the Brier score come from real probabilities), the
image's share of its batch's seconds as latency, a thumbnail. Nothing is generated, so ``raw`` is
empty and every answer is valid.

Example::

    records = probability_records(splits.test, probs, splits.labels, seconds)
    run, metrics = write_method_run(parent, "zero_shot", cfg, records, extra={"method": "zero-shot"}, splits=splits)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dspy
import numpy as np

from vlmopt.config import TaskConfig
from vlmopt.datasets import LoadedSplits
from vlmopt.datasets.images import thumbnail_uri
from vlmopt.metrics import compute_metrics
from vlmopt.metrics.records import PredictionRecord
from vlmopt.reports.html import write_report
from vlmopt.reports.plots import plot_confusion_matrix
from vlmopt.reports.run_dir import METRICS, RunDir


def probability_records(
    examples: Sequence[dspy.Example], probabilities: np.ndarray, labels: Sequence[str], seconds: Sequence[float]
) -> list[PredictionRecord]:
    """One row per example: the most probable label, its probability as confidence, the distribution."""
    records = []
    for example, row, spent in zip(examples, probabilities, seconds, strict=True):
        distribution = {label: float(p) for label, p in zip(labels, row, strict=True)}
        predicted = labels[int(np.argmax(row))]
        records.append(
            PredictionRecord(
                id=str(example.id),
                gold=example.label,
                predicted=predicted,
                valid=True,
                confidence=min(1.0, distribution[predicted]),
                probabilities=distribution,
                latency_s=float(spent),
                image_ref=example.get("image_ref"),
                thumbnail=thumbnail_uri(example.image),
            )
        )
    return records


def split_metrics(records: Sequence[PredictionRecord], split: str, splits: LoadedSplits, seed: int) -> dict[str, Any]:
    """The standard summary of one split's rows, with the split bookkeeping a VLM run's carries."""
    metrics = compute_metrics(records, output_kind="single_label", labels=splits.labels, seed=seed)
    metrics.update(
        n_failed=0,
        split=split,
        split_sizes=splits.sizes(),
        n_skipped=len(splits.skipped),
        split_fingerprint=splits.fingerprint,
    )
    return metrics


def write_method_run(
    parent: RunDir,
    name: str,
    cfg: TaskConfig,
    records: Sequence[PredictionRecord],
    *,
    splits: LoadedSplits,
    extra: dict[str, Any],
    files: dict[str, Any] | None = None,
) -> tuple[RunDir, dict[str, Any]]:
    """A finished run directory ``<parent>/<name>/`` for one method's test rows; returns it and its metrics.

    ``cfg`` is the config as this method ran it (its ``model`` is the contrastive model);
    ``extra`` joins ``metrics.json`` (method, cost fields), ``files`` are more JSON files to write.
    """
    run = parent.child(name)
    run.write_config(cfg)
    for record in records:
        run.append_prediction(record)
    for skip in splits.skipped:
        run.append_failure(skip.id, "image", f"{skip.reason}: {skip.message}")
    metrics = {**split_metrics(records, "test", splits, cfg.seed), **extra}
    for file_name, content in (files or {}).items():
        run.write_json(file_name, content)
    run.write_json(METRICS, metrics)
    plot_confusion_matrix(metrics["confusion"], run.path / "confusion.png")
    write_report(run.path)
    return run, metrics
