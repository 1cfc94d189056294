"""Multi-label metrics: exact match, Hamming score, per-label precision / recall / F1.

Each answer is a *set* of labels (list order and repeats are ignored). Definitions:

- exact match: predicted set == gold set.
- Hamming score (Godbole & Sarawagi 2004): per example ``|gold ∩ pred| / |gold ∪ pred|``,
  averaged; an example whose gold and predicted sets are both empty scores 1.0. This is
  scikit-learn's ``jaccard_score(average="samples", zero_division=1.0)``, not
  ``1 - hamming_loss`` (which counts wrong label slots over all labels).
- per-label P/R/F1: each label is a binary problem over the examples (TP = label in both sets);
  zero-division conventions and the macro-F1 average are those of
  :mod:`vlmopt.metrics.classification`.

An invalid output (``None``) scores 0 on exact match and Hamming even when the gold set is
empty, and counts as predicting no label in the per-label counts (so it costs recall, not
precision). scikit-learn has no notion of an invalid answer: an empty predicted set would match
an empty gold set there (tests/test_metrics_oracle.py encodes the rule).

Example::

    m = multilabel_metrics([["cat"], ["cat", "dog"]], [["cat"], ["dog"]], labels=["cat", "dog"])
    m["exact_match"]  # 0.5
    m["hamming"]      # (1 + 1/2) / 2 = 0.75
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlmopt.metrics.classification import (
    item_name,
    label_index,
    macro_f1,
    per_class_table,
    precision_recall_f1,
)


def hamming_score(gold: Sequence[str], predicted: Sequence[str] | None) -> float:
    """``|G ∩ P| / |G ∪ P|`` for one example; 1.0 when both are empty, 0.0 when invalid."""
    if predicted is None:
        return 0.0
    g, p = set(gold), set(predicted)
    union = g | p
    return 1.0 if not union else len(g & p) / len(union)


def exact_match(gold: Sequence[str], predicted: Sequence[str] | None) -> bool:
    """Same set of labels; an invalid output (None) never matches."""
    return predicted is not None and set(gold) == set(predicted)


def _check_known(values: Sequence[str], known: set[str], what: str, where: str) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: {what} labels {unknown} are not in the label set {sorted(known)}")


def multilabel_metrics(
    gold: Sequence[Sequence[str]],
    predicted: Sequence[Sequence[str] | None],
    labels: Sequence[str],
    *,
    ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Exact match, Hamming score, invalid rate, macro-F1 and per-label P/R/F1/support.

    A label outside ``labels`` in gold or in a valid prediction is a ValueError naming the
    example (by ``ids`` when given); the parser upstream marks such outputs invalid.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold label sets but {len(predicted)} predictions")
    if not gold:
        raise ValueError("no examples to score")
    position_of = label_index(labels)
    known = set(position_of)
    true_positive = np.zeros(len(labels), dtype=int)
    n_predicted = np.zeros(len(labels), dtype=int)
    support = np.zeros(len(labels), dtype=int)
    for position, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        _check_known(g, known, "gold", item_name(position, ids))
        if p is not None:
            _check_known(p, known, "predicted", item_name(position, ids))
        g_set, p_set = set(g), set(p or ())
        for label in g_set:
            support[position_of[label]] += 1
        for label in p_set:
            n_predicted[position_of[label]] += 1
        for label in g_set & p_set:
            true_positive[position_of[label]] += 1
    _, _, f1 = precision_recall_f1(true_positive, n_predicted, support)
    n = len(gold)
    n_invalid = sum(p is None for p in predicted)
    return {
        "n": n,
        "n_invalid": n_invalid,
        "invalid_rate": n_invalid / n,
        "exact_match": sum(exact_match(g, p) for g, p in zip(gold, predicted, strict=True)) / n,
        "hamming": sum(hamming_score(g, p) for g, p in zip(gold, predicted, strict=True)) / n,
        "macro_f1": macro_f1(f1, n_predicted, support),
        "per_label": per_class_table(labels, true_positive, n_predicted, support),
    }
