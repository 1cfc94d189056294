"""scikit-learn as the oracle for the hand-written metrics, over seeded random cases.

``vlmopt.metrics`` stays hand-written because scikit-learn is a dev dependency only; these tests
hold every number it computes to scikit-learn's to 1e-12 on cases drawn to hit the corners:
invalid answers, classes absent from gold or never predicted, a single gold class, empty
label sets. Where the project's rule differs from a plain scikit-learn call on purpose, the test
spells the rule out in the call it makes (and the metric's docstring says why):

- an invalid answer is a wrong answer, never a class: it is encoded as a sentinel outside the
  label set, so it costs recall and is not counted in any class's precision nor in macro-F1;
- macro-F1 averages over the classes seen in gold or in valid predictions (``labels=seen``);
- multi-label: an invalid answer scores 0 even against an empty gold set (encoded as the
  complement of gold, which cannot match); the "Hamming score" is scikit-learn's
  ``jaccard_score(average="samples")``, not ``1 - hamming_loss``;
- calibration bins are ``numpy.histogram``'s ``[lower, upper)``; scikit-learn's
  ``calibration_curve`` agrees off the bin edges.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    jaccard_score,
    precision_recall_fscore_support,
)
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.preprocessing import MultiLabelBinarizer

from vlmopt.metrics import (
    PredictionRecord,
    bootstrap_mean_ci,
    brier_score,
    calibration,
    compute_metrics,
    multifield_metrics,
    multilabel_metrics,
    single_label_metrics,
)

TOL = 1e-12
SEEDS = range(60)
INVALID_ANSWER = "<invalid>"
"""How an invalid answer (None) is spelled for scikit-learn: never one of the labels."""


def close(ours: float, oracle: float) -> bool:
    return abs(ours - float(oracle)) <= TOL


def records(gold: list, predicted: list) -> list[PredictionRecord]:
    return [PredictionRecord(id=f"x{i}", gold=g, predicted=p, valid=p is not None)
            for i, (g, p) in enumerate(zip(gold, predicted, strict=True))]


# --- single label --------------------------------------------------------------------------


def single_label_case(rng: np.random.Generator) -> tuple[list[str], list[str], list[str | None]]:
    """Labels, gold and predictions; gold and predictions each use a random subset of the labels."""
    labels = [f"c{i}" for i in range(rng.integers(2, 7))]
    n = int(rng.integers(1, 40))
    gold_pool = rng.choice(labels, size=rng.integers(1, len(labels) + 1), replace=False)  # size 1: one gold class
    pred_pool = rng.choice(labels, size=rng.integers(1, len(labels) + 1), replace=False)
    gold = [str(g) for g in rng.choice(gold_pool, size=n)]
    p_invalid = rng.choice([0.0, 0.2, 0.6])
    predicted = [None if rng.random() < p_invalid else str(rng.choice(pred_pool)) for _ in range(n)]
    return labels, gold, predicted


def assert_single_label_matches_sklearn(m: dict, gold: list[str], predicted: list[str | None], labels: list[str]):
    y_pred = [INVALID_ANSWER if p is None else p for p in predicted]
    assert close(m["accuracy"], accuracy_score(gold, y_pred))
    matrix = sk_confusion_matrix(gold, y_pred, labels=[*labels, INVALID_ANSWER])
    assert matrix[-1].sum() == 0 and m["confusion"]["matrix"] == matrix[:-1].tolist()
    precision, recall, f1, support = precision_recall_fscore_support(gold, y_pred, labels=labels, zero_division=0)
    for i, label in enumerate(labels):
        row = m["per_class"][label]
        assert close(row["precision"], precision[i]) and close(row["recall"], recall[i]), label
        assert close(row["f1"], f1[i]) and row["support"] == support[i], label
    seen = sorted(set(gold) | {p for p in predicted if p is not None})
    assert close(m["macro_f1"], f1_score(gold, y_pred, labels=seen, average="macro", zero_division=0))
    if None not in predicted:  # without invalid answers the rule is scikit-learn's default label set
        assert close(m["macro_f1"], f1_score(gold, y_pred, average="macro", zero_division=0))


@pytest.mark.parametrize("seed", SEEDS)
def test_single_label_metrics_equal_sklearn(seed):
    labels, gold, predicted = single_label_case(np.random.default_rng(seed))
    assert_single_label_matches_sklearn(single_label_metrics(gold, predicted, labels), gold, predicted, labels)
    summary = compute_metrics(records(gold, predicted), output_kind="single_label", labels=labels)
    y_pred = [INVALID_ANSWER if p is None else p for p in predicted]
    assert close(summary["accuracy"], accuracy_score(gold, y_pred))


def test_macro_f1_leaves_out_invalid_answers_and_unseen_classes():
    # "c" never occurs; one answer is invalid. scikit-learn's default set would average over the
    # invalid sentinel too, labels=LABELS over "c" too: both pull the mean down with zeros.
    labels, gold, predicted = ["a", "b", "c"], ["a", "a", "b", "b"], ["a", None, "b", "a"]
    y_pred = [INVALID_ANSWER if p is None else p for p in predicted]
    ours = single_label_metrics(gold, predicted, labels)["macro_f1"]
    assert close(ours, f1_score(gold, y_pred, labels=["a", "b"], average="macro", zero_division=0))
    assert ours > f1_score(gold, y_pred, average="macro", zero_division=0)
    assert ours > f1_score(gold, y_pred, labels=labels, average="macro", zero_division=0)


# --- multi label ---------------------------------------------------------------------------


def label_set(rng: np.random.Generator, labels: list[str]) -> list[str]:
    """A random subset, in random order, sometimes with a repeat (sets ignore both)."""
    chosen = [str(x) for x in rng.choice(labels, size=rng.integers(0, len(labels) + 1), replace=False)]
    return chosen + chosen[:1] if chosen and rng.random() < 0.2 else chosen


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = [f"t{i}" for i in range(rng.integers(2, 6))]
    n = int(rng.integers(1, 30))
    gold = [label_set(rng, labels) for _ in range(n)]
    predicted = [None if rng.random() < 0.2 else label_set(rng, labels) for _ in range(n)]
    m = multilabel_metrics(gold, predicted, labels)

    binarizer = MultiLabelBinarizer(classes=labels)
    y_true = binarizer.fit_transform(gold)
    y_pred = binarizer.transform([p or [] for p in predicted])  # invalid predicts no label
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, average=None, zero_division=0)
    for i, label in enumerate(labels):
        row = m["per_label"][label]
        assert close(row["precision"], precision[i]) and close(row["recall"], recall[i]), label
        assert close(row["f1"], f1[i]) and row["support"] == support[i], label
    seen = np.flatnonzero(y_true.any(axis=0) | y_pred.any(axis=0))
    oracle_macro = f1_score(y_true, y_pred, labels=seen, average="macro", zero_division=0) if seen.size else 0.0
    assert close(m["macro_f1"], oracle_macro)

    invalid = np.array([p is None for p in predicted])
    scored = np.where(invalid[:, None], 1 - y_true, y_pred)  # an invalid answer matches nothing
    assert close(m["exact_match"], accuracy_score(y_true, scored))
    assert close(m["hamming"], jaccard_score(y_true, scored, average="samples", zero_division=1.0))
    summary = compute_metrics(records(gold, predicted), output_kind="multi_label", labels=labels)
    assert close(summary["accuracy"], accuracy_score(y_true, scored))


# --- multi field ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_multifield_metrics_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    fields = {"make": ["audi", "bmw", "fiat"], "year": ["2011", "2012"], "body": ["suv", "van", "coupe", "cab"]}
    n = int(rng.integers(1, 30))
    gold = [{f: str(rng.choice(values)) for f, values in fields.items()} for _ in range(n)]
    predicted = []
    for _ in range(n):  # invalid, a field missing, or a full answer
        kept = [f for f in fields if rng.random() > 0.15]
        predicted.append(None if rng.random() < 0.15 else {f: str(rng.choice(fields[f])) for f in kept})
    m = multifield_metrics(gold, predicted, fields)

    def value(answer: dict | None, field: str) -> str:
        return INVALID_ANSWER if answer is None or field not in answer else answer[field]

    for field, labels in fields.items():
        gold_f, pred_f = [g[field] for g in gold], [None if p is None else p.get(field) for p in predicted]
        assert_single_label_matches_sklearn(m["per_field"][field], gold_f, pred_f, labels)
    whole = ["|".join(value(a, f) for f in fields) for a in predicted]
    exact = accuracy_score(["|".join(g[f] for f in fields) for g in gold], whole)
    assert close(m["exact_match"], exact)
    per_field = [accuracy_score([g[f] for g in gold], [value(p, f) for p in predicted]) for f in fields]
    assert close(m["field_accuracy"], np.mean(per_field))
    summary = compute_metrics(records(gold, predicted), output_kind="multi_field", fields=fields)
    assert close(summary["accuracy"], exact)


# --- calibration ---------------------------------------------------------------------------


def reported_edges(result: dict) -> np.ndarray:
    return np.array([b["lower"] for b in result["bins"]] + [result["bins"][-1]["upper"]])


@pytest.mark.parametrize("seed", SEEDS)
def test_calibration_bins_equal_sklearn_calibration_curve(seed):
    rng = np.random.default_rng(seed)
    n_bins = int(rng.integers(1, 21))
    confidence = rng.random(int(rng.integers(1, 200)))  # uniform floats: off the bin edges
    correct = rng.random(confidence.size) < rng.random()
    result = calibration(confidence, correct, n_bins=n_bins)

    counts = np.array([b["count"] for b in result["bins"]])
    assert (counts == np.histogram(confidence, bins=reported_edges(result))[0]).all()
    prob_true, prob_pred = calibration_curve(correct.astype(int), confidence, n_bins=n_bins, pos_label=1)
    filled = [b for b in result["bins"] if b["count"]]
    assert len(filled) == len(prob_true)
    for b, accuracy, mean_confidence in zip(filled, prob_true, prob_pred, strict=True):
        assert close(b["accuracy"], accuracy) and close(b["confidence"], mean_confidence)
    oracle_ece = np.sum(counts[counts > 0] / confidence.size * np.abs(prob_true - prob_pred))
    assert close(result["ece"], oracle_ece)


@pytest.mark.parametrize("n_bins", range(1, 31))
def test_a_confidence_on_a_bin_edge_opens_its_bin(n_bins):
    # numpy.histogram's rule on the reported bounds: [lower, upper), the last bin closed. Truncating
    # confidence * n_bins put 15/22, 13/23 and 15/26 one bin too low (15/22 * 22 < 15 in floats).
    edges = [k / n_bins for k in range(n_bins + 1)]
    result = calibration(edges, [True] * len(edges), n_bins=n_bins)
    assert reported_edges(result).tolist() == edges
    counts = [b["count"] for b in result["bins"]]
    assert counts == np.histogram(edges, bins=reported_edges(result))[0].tolist()
    assert counts == [1] * (n_bins - 1) + [2]  # each edge opens a bin; 1.0 joins the last


@pytest.mark.parametrize("seed", SEEDS)
def test_brier_score_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = [f"c{i}" for i in range(rng.integers(2, 6))]
    n = int(rng.integers(1, 30))
    gold = [str(g) for g in rng.choice(labels, size=n)]
    proba = rng.dirichlet(np.ones(len(labels)), size=n)
    dropped = rng.integers(0, len(labels), size=n)
    proba[np.arange(n), dropped] = np.where(rng.random(n) < 0.5, 0.0, proba[np.arange(n), dropped])
    proba /= proba.sum(axis=1, keepdims=True)
    # A label with probability 0 is left out of the dict half the time: missing means 0.
    dicts = [{label: float(p) for label, p in zip(labels, row, strict=True) if p > 0 or rng.random() < 0.5}
             for row in proba]
    oracle = brier_score_loss(gold, proba, labels=labels, scale_by_half=False)
    assert close(brier_score(dicts, gold), oracle)


# --- bootstrap -----------------------------------------------------------------------------


def test_bootstrap_blocks_resample_like_one_draw():
    # No scikit-learn counterpart: the oracle is the unblocked percentile bootstrap with the same
    # generator, so the memory bound (n large enough to split the draws into blocks) changes nothing.
    scores = np.random.default_rng(1).random(5000) < 0.8
    rng = np.random.default_rng(7)
    means = scores[rng.integers(0, scores.size, size=(1000, scores.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    ours = bootstrap_mean_ci(scores, n_boot=1000, seed=7, confidence=0.95)
    assert close(ours[0], low) and close(ours[1], high)


# --- dev only ------------------------------------------------------------------------------


SKLEARN_ALLOWED = {"vlmopt/alternatives/linear_probe.py"}
"""The linear probe (the ``baselines`` extra) is the package's one scikit-learn user."""


def test_the_package_imports_sklearn_only_in_the_linear_probe():
    # scikit-learn is an optional extra: the metrics' oracle lives here, the package runs without it,
    # except the linear probe, which imports it inside a function, when a probe is asked for.
    root = Path(__file__).resolve().parents[1]
    imports, top_level = [], []
    for path in sorted((root / "vlmopt").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        relative = path.relative_to(root).as_posix()
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name.split(".")[0] == "sklearn" for name in names):
                (top_level if node in tree.body else imports).append(relative)
    assert set(imports) == SKLEARN_ALLOWED and top_level == []
