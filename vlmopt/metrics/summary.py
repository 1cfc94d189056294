"""``compute_metrics``: prediction records -> the JSON summary written as ``metrics.json``.

One entry point for the three output kinds so the evaluate command, the optimizer's final
report and a notebook all produce the same numbers. Keys common to every kind:

``output_kind, n, n_valid, n_invalid, invalid_rate, accuracy, accuracy_ci, ece, calibration,
latency, tokens``

``accuracy`` is exact-match accuracy for every kind (the whole answer right), so runs of
different kinds read the same way; invalid outputs count as wrong. ``accuracy_ci`` is a seeded
percentile bootstrap (``{"low", "high", "level", "n_boot", "seed"}``). Kind-specific keys:

- single_label: ``macro_f1, per_class, confusion`` (see :mod:`.classification`)
- multi_label: ``exact_match, hamming, hamming_ci, macro_f1, per_label`` (see :mod:`.multilabel`)
- multi_field: ``exact_match, field_accuracy, per_field`` (see :mod:`.multifield`)

Optional: ``selective`` (a program that abstains, see :mod:`.selective`) and ``other`` (a task
with a "none of these" label). ``accuracy`` always scores the top label of every image.

Calibration uses each record's ``confidence``; for single_label a record without one falls
back to ``probabilities[predicted]``. Records with neither are left out (``calibration["n"]``
says how many were used); ``brier`` needs single_label ``probabilities``.

Example::

    metrics = compute_metrics(records, output_kind="single_label", labels=["cat", "dog"], seed=0)
    Path("metrics.json").write_text(json.dumps(metrics, indent=2))
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vlmopt.metrics.bootstrap import bootstrap_interval
from vlmopt.metrics.calibration import brier_score, calibration
from vlmopt.metrics.classification import other_label_summary, single_label_metrics
from vlmopt.metrics.latency import latency_summary, token_summary
from vlmopt.metrics.multifield import fields_correct, multifield_metrics
from vlmopt.metrics.multilabel import exact_match, hamming_score, multilabel_metrics
from vlmopt.metrics.records import PredictionRecord
from vlmopt.metrics.selective import selective_metrics

OUTPUT_KINDS = ("single_label", "multi_label", "multi_field")
_GOLD_TYPES = {"single_label": str, "multi_label": list, "multi_field": dict}


def _check_shapes(records: Sequence[PredictionRecord], output_kind: str) -> None:
    expected = _GOLD_TYPES[output_kind]
    for r in records:
        for what, value in (("gold", r.gold), ("predicted", r.predicted)):
            if value is not None and not isinstance(value, expected):
                raise ValueError(
                    f"record {r.id!r}: {what} is a {type(value).__name__}, "
                    f"but a {output_kind} answer is a {expected.__name__}"
                )


def answer_correct(gold: Any, predicted: Any, output_kind: str) -> bool:
    """Whole-answer correctness, the one rule behind ``accuracy`` for every output kind."""
    if predicted is None:
        return False
    if output_kind == "multi_label":
        return exact_match(gold, predicted)
    if output_kind == "multi_field":
        return all(fields_correct(gold, predicted, list(gold)))
    return predicted == gold


def _confidence(record: PredictionRecord, output_kind: str) -> float | None:
    if record.confidence is not None:
        return record.confidence
    if output_kind == "single_label" and record.probabilities and record.valid:
        return record.probabilities.get(record.predicted)
    return None


def compute_metrics(
    records: Iterable[PredictionRecord],
    *,
    output_kind: str,
    labels: Sequence[str] | None = None,
    fields: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    n_bins: int = 10,
    ci_level: float = 0.95,
    abstention: Mapping[str, Any] | None = None,
    other_label: str | None = None,
) -> dict[str, Any]:
    """The JSON-serialisable metrics summary of one evaluation (see the module docstring).

    ``abstention`` (the program's ``{"threshold", "confidence"}``) adds ``selective``: coverage,
    accuracy on the answered and overall, with intervals (:mod:`.selective`). ``other_label``
    (single_label) adds ``other``: that label's counts, set apart from the others.

    ``labels`` is required for single_label and multi_label, ``fields`` (name -> values) for
    multi_field. Raises ValueError on no records, an unknown kind, or answers of the wrong shape
    or outside the class set (naming the record).
    """
    records = list(records)
    if not records:
        raise ValueError("no prediction records to score")
    if output_kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output_kind {output_kind!r}; expected one of {list(OUTPUT_KINDS)}")
    if output_kind == "multi_field" and not fields:
        raise ValueError("multi_field metrics need fields (name -> list of values)")
    if output_kind != "multi_field" and not labels:
        raise ValueError(f"{output_kind} metrics need labels")
    _check_shapes(records, output_kind)

    ids = [r.id for r in records]
    gold = [r.gold for r in records]
    predicted = [r.predicted for r in records]
    if output_kind == "single_label":
        body = single_label_metrics(gold, predicted, labels, ids=ids)
    elif output_kind == "multi_label":
        body = multilabel_metrics(gold, predicted, labels, ids=ids)
        hamming = [hamming_score(g, p) for g, p in zip(gold, predicted, strict=True)]
        body["hamming_ci"] = bootstrap_interval(hamming, n_boot=n_boot, seed=seed, level=ci_level)
    else:
        body = multifield_metrics(gold, predicted, fields, ids=ids)
    correct = [answer_correct(g, p, output_kind) for g, p in zip(gold, predicted, strict=True)]

    confidences = [_confidence(r, output_kind) for r in records]
    scored = [(c, ok) for c, ok in zip(confidences, correct, strict=True) if c is not None]
    calib = calibration([c for c, _ in scored], [ok for _, ok in scored], n_bins=n_bins)
    with_probs = [r for r in records if r.probabilities] if output_kind == "single_label" else []
    calib["brier"] = (
        brier_score([r.probabilities for r in with_probs], [r.gold for r in with_probs]) if with_probs else None
    )
    calib["n_brier"] = len(with_probs)

    # The kind-specific body repeats the counts computed here once for all kinds.
    n_invalid = body.pop("n_invalid")
    for key in ("n", "invalid_rate", "accuracy"):
        body.pop(key, None)
    n = len(records)
    extra: dict[str, Any] = {}
    if abstention is not None:
        extra["selective"] = {
            "threshold": abstention["threshold"], "confidence": abstention["confidence"],
            **selective_metrics([r.abstained for r in records], correct, [r.valid for r in records],
                                n_boot=n_boot, seed=seed, level=ci_level),
        }
    if other_label is not None and output_kind == "single_label":
        extra["other"] = other_label_summary(gold, predicted, [r.abstained for r in records], other_label)
    return {
        "output_kind": output_kind,
        "n": n,
        "n_valid": n - n_invalid,
        "n_invalid": n_invalid,
        "invalid_rate": n_invalid / n,
        "accuracy": sum(correct) / n,
        "accuracy_ci": bootstrap_interval([float(c) for c in correct], n_boot=n_boot, seed=seed, level=ci_level),
        **body,
        "ece": calib["ece"],
        "calibration": calib,
        "latency": latency_summary([r.latency_s for r in records]),
        "tokens": token_summary([r.prompt_tokens for r in records], [r.completion_tokens for r in records]),
        **extra,
    }
