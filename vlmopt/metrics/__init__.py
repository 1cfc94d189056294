"""Scoring a classifier's predictions: accuracy with intervals, per-class and multi-label /
multi-field metrics, calibration, cost per image, DSPy optimizer metrics — pure functions.

Presenting them (plots, the CLI table, the HTML report) is :mod:`vlmopt.reports`' job.

Typical use (the evaluate command does exactly this)::

    from vlmopt.metrics import PredictionRecord, compute_metrics

    metrics = compute_metrics(records, output_kind="single_label", labels=labels, seed=cfg.seed)
    metrics["accuracy"], metrics["accuracy_ci"], metrics["confusion"]
"""

from vlmopt.metrics.bootstrap import bootstrap_mean_ci
from vlmopt.metrics.calibration import brier_score, calibration
from vlmopt.metrics.classification import INVALID, confusion_matrix, single_label_metrics
from vlmopt.metrics.dspy_metrics import (
    label_accuracy,
    metric_for,
    multifield_exact,
    multifield_mean,
    multilabel_exact,
    multilabel_hamming,
)
from vlmopt.metrics.latency import latency_summary, token_summary
from vlmopt.metrics.multifield import multifield_metrics
from vlmopt.metrics.multilabel import exact_match, hamming_score, multilabel_metrics
from vlmopt.metrics.records import PredictionRecord
from vlmopt.metrics.summary import OUTPUT_KINDS, answer_correct, compute_metrics

__all__ = [
    "INVALID",
    "OUTPUT_KINDS",
    "PredictionRecord",
    "answer_correct",
    "bootstrap_mean_ci",
    "brier_score",
    "calibration",
    "compute_metrics",
    "confusion_matrix",
    "exact_match",
    "hamming_score",
    "label_accuracy",
    "latency_summary",
    "metric_for",
    "multifield_exact",
    "multifield_mean",
    "multifield_metrics",
    "multilabel_exact",
    "multilabel_hamming",
    "multilabel_metrics",
    "single_label_metrics",
    "token_summary",
]
