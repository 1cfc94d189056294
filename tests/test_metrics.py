"""Metrics against hand-computed expectations (no sklearn here: every number is worked out below)."""

from __future__ import annotations

import io
import json

import dspy
import numpy as np
import pydantic
import pytest
from PIL import Image
from rich.console import Console

from vlmopt.metrics import (
    PredictionRecord,
    bootstrap_mean_ci,
    brier_score,
    calibration,
    compute_metrics,
    confusion_matrix,
    label_accuracy,
    latency_summary,
    metric_for,
    multifield_exact,
    multifield_mean,
    multifield_metrics,
    multilabel_exact,
    multilabel_hamming,
    multilabel_metrics,
    single_label_metrics,
    token_summary,
)
from vlmopt.reports.metrics_table import summary_table
from vlmopt.reports.plots import plot_confusion_matrix, plot_reliability

# --- the single-label hand set -------------------------------------------------------------
# Labels: cat, dog, bird, fish (fish never occurs in gold nor in predictions).
LABELS = ["cat", "dog", "bird", "fish"]
GOLD = ["cat", "cat", "cat", "cat", "dog", "dog", "dog", "bird", "bird", "bird"]
PRED = ["cat", "cat", "dog", None, "dog", "dog", "cat", "bird", "dog", None]
# Confusion, rows = gold, columns = cat, dog, bird, fish, invalid:
#   cat : 2 1 0 0 1
#   dog : 1 2 0 0 0
#   bird: 0 1 1 0 1
#   fish: 0 0 0 0 0
# accuracy = (2 + 2 + 1) / 10 = 0.5; invalid = 2 (rate 0.2)
# cat : TP 2, predicted 3 -> P 2/3, support 4 -> R 1/2, F1 = 2*(1/3)/(7/6) = 4/7
# dog : TP 2, predicted 4 -> P 1/2, support 3 -> R 2/3, F1 = 4/7
# bird: TP 1, predicted 1 -> P 1,   support 3 -> R 1/3, F1 = 2*(1/3)/(4/3) = 1/2
# fish: nothing -> P = R = F1 = 0 (zero division), support 0, left out of macro-F1
# macro-F1 = (4/7 + 4/7 + 1/2) / 3 = 23/42
EXPECTED_MATRIX = [[2, 1, 0, 0, 1], [1, 2, 0, 0, 0], [0, 1, 1, 0, 1], [0, 0, 0, 0, 0]]
EXPECTED_PER_CLASS = {
    "cat": (2 / 3, 1 / 2, 4 / 7, 4),
    "dog": (1 / 2, 2 / 3, 4 / 7, 3),
    "bird": (1.0, 1 / 3, 1 / 2, 3),
    "fish": (0.0, 0.0, 0.0, 0),
}


def _check_per_class(per_class: dict, expected: dict) -> None:
    assert list(per_class) == list(expected)
    for label, (precision, recall, f1, support) in expected.items():
        row = per_class[label]
        assert row["precision"] == pytest.approx(precision), label
        assert row["recall"] == pytest.approx(recall), label
        assert row["f1"] == pytest.approx(f1), label
        assert row["support"] == support, label


def _records(gold, predicted, **extra) -> list[PredictionRecord]:
    return [
        PredictionRecord(id=f"img{i}", gold=g, predicted=p, raw=json.dumps(p), valid=p is not None,
                         **{k: v[i] for k, v in extra.items()})
        for i, (g, p) in enumerate(zip(gold, predicted, strict=True))
    ]


def test_single_label_matches_hand_computed_set():
    m = single_label_metrics(GOLD, PRED, LABELS)
    assert m["confusion"]["matrix"] == EXPECTED_MATRIX
    assert m["confusion"]["columns"] == [*LABELS, "invalid"]
    assert m["n"] == 10 and m["n_invalid"] == 2 and m["invalid_rate"] == pytest.approx(0.2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(23 / 42)
    _check_per_class(m["per_class"], EXPECTED_PER_CLASS)


def test_invalid_outputs_count_as_wrong_not_as_a_class():
    # Every answer invalid: accuracy 0, all in the invalid column, no class gets a false positive.
    m = single_label_metrics(["cat", "dog"], [None, None], ["cat", "dog"])
    assert m["accuracy"] == 0.0 and m["n_invalid"] == 2
    assert m["confusion"]["matrix"] == [[0, 0, 1], [0, 0, 1]]
    assert all(row["precision"] == 0.0 and row["recall"] == 0.0 for row in m["per_class"].values())


def test_labels_outside_the_class_set_are_refused_by_name():
    with pytest.raises(ValueError, match="'pug'.*recorded as invalid"):
        confusion_matrix(["dog"], ["pug"], ["cat", "dog"])
    records = _records(["cat", "horse"], ["cat", "cat"])
    with pytest.raises(ValueError, match="record 'img1': gold label 'horse'"):
        compute_metrics(records, output_kind="single_label", labels=["cat", "dog"])


def test_compute_metrics_single_label_summary():
    latencies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    prompt_tokens = [100] * 9 + [None]
    completion_tokens = [4, 6, 4, 6, 4, 6, 4, 6, 4, 6]
    # Confidence on valid answers only; img0 gets its confidence from probabilities instead.
    confidence = [None, 0.9, 0.9, None, 0.9, 0.9, 0.6, 0.6, 0.6, None]
    probabilities = [{"cat": 0.8, "dog": 0.2}] + [None] * 9
    records = _records(GOLD, PRED, latency_s=latencies, prompt_tokens=prompt_tokens,
                       completion_tokens=completion_tokens, confidence=confidence, probabilities=probabilities)
    m = compute_metrics(records, output_kind="single_label", labels=LABELS, seed=3, n_boot=500, n_bins=10)

    json.dumps(m, allow_nan=False)  # metrics.json must be plain, strict JSON
    assert (m["n"], m["n_valid"], m["n_invalid"]) == (10, 8, 2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(23 / 42)
    assert m["confusion"]["matrix"] == EXPECTED_MATRIX
    _check_per_class(m["per_class"], EXPECTED_PER_CLASS)
    ci = m["accuracy_ci"]
    assert ci["low"] <= 0.5 <= ci["high"] and (ci["level"], ci["n_boot"], ci["seed"]) == (0.95, 500, 3)

    # Calibration over the 8 answers with a confidence (img0 via probabilities["cat"] = 0.8):
    #   bin [0.8, 0.9): img0 conf 0.8, right          -> gap 0.2, weight 1/8
    #   bin [0.9, 1.0]: img1 ok, img2 x, img4 ok, img5 ok -> conf 0.9, acc 0.75, gap 0.15, weight 4/8
    #   bin [0.6, 0.7): img6 x, img7 ok, img8 x       -> conf 0.6, acc 1/3, gap 0.6 - 1/3, weight 3/8
    expected_ece = 0.2 / 8 + 0.15 * 4 / 8 + (0.6 - 1 / 3) * 3 / 8
    assert m["calibration"]["n"] == 8
    assert m["ece"] == pytest.approx(expected_ece)
    # Brier over the single record with probabilities: (0.8 - 1)^2 + (0.2 - 0)^2 = 0.08
    assert m["calibration"]["brier"] == pytest.approx(0.08) and m["calibration"]["n_brier"] == 1

    # Linear-interpolated percentiles of 0.1..1.0: p50 = 0.55, p95 = 0.9 + 0.55 * 0.1 = 0.955
    assert m["latency"]["p50_s"] == pytest.approx(0.55)
    assert m["latency"]["p95_s"] == pytest.approx(0.955)
    assert m["tokens"] == {"prompt_mean": 100.0, "completion_mean": 5.0, "n_prompt": 9, "n_completion": 10}


def test_compute_metrics_refuses_bad_input():
    with pytest.raises(ValueError, match="no prediction records"):
        compute_metrics([], output_kind="single_label", labels=["a"])
    with pytest.raises(ValueError, match="unknown output_kind 'regression'"):
        compute_metrics(_records(["a"], ["a"]), output_kind="regression", labels=["a"])
    with pytest.raises(ValueError, match="record 'img0': gold is a str, but a multi_label answer is a list"):
        compute_metrics(_records(["a"], ["a"]), output_kind="multi_label", labels=["a"])
    with pytest.raises(ValueError, match="need fields"):
        compute_metrics(_records([{"f": "a"}], [{"f": "a"}]), output_kind="multi_field")


# --- bootstrap -----------------------------------------------------------------------------


def test_bootstrap_is_seeded_contains_estimate_and_narrows_with_data():
    small = [1.0] * 14 + [0.0] * 6  # accuracy 0.7 on 20 examples
    first = bootstrap_mean_ci(small, n_boot=1000, seed=7)
    assert first == bootstrap_mean_ci(small, n_boot=1000, seed=7)
    # 0/1 scores on 20 examples give coarse quantiles; graded scores show the seed is used.
    graded = np.linspace(0.0, 1.0, 37)
    assert bootstrap_mean_ci(graded, seed=1) == bootstrap_mean_ci(graded, seed=1)
    assert bootstrap_mean_ci(graded, seed=1) != bootstrap_mean_ci(graded, seed=2)
    assert first[0] <= 0.7 <= first[1]
    assert first[0] < first[1]

    large = small * 250  # same accuracy on 5000 examples (resampled in several memory blocks)
    low, high = bootstrap_mean_ci(large, n_boot=1000, seed=7)
    assert low <= 0.7 <= high
    assert high - low < (first[1] - first[0]) / 5  # width shrinks ~ 1/sqrt(n): sqrt(250) ~ 16x


def test_bootstrap_rejects_empty_scores():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_mean_ci([], seed=0)


# --- calibration ---------------------------------------------------------------------------


def test_ece_on_a_hand_example():
    # 5 equal-width bins of 0.2.
    #   bin [0.2, 0.4): conf 0.3 wrong, 0.35 right   -> mean conf 0.325, acc 0.5, gap 0.175
    #   bin [0.8, 1.0]: conf 0.85 wrong, 1.0 right   -> mean conf 0.925, acc 0.5, gap 0.425
    # ECE = 2/4 * 0.175 + 2/4 * 0.425 = 0.3 (1.0 falls in the last bin)
    result = calibration([0.3, 0.35, 0.85, 1.0], [False, True, False, True], n_bins=5)
    assert result["ece"] == pytest.approx(0.3)
    assert [b["count"] for b in result["bins"]] == [0, 2, 0, 0, 2]
    assert result["bins"][1]["confidence"] == pytest.approx(0.325)
    assert result["bins"][4]["accuracy"] == pytest.approx(0.5)
    assert result["bins"][0]["accuracy"] is None  # empty bins stay visible as gaps
    assert calibration([1.0, 1.0], [True, True])["ece"] == pytest.approx(0.0)
    assert calibration([], [])["ece"] is None


def test_brier_score_by_hand():
    # (0.3^2 + 0.3^2) + (0.8^2 + 0.8^2) + (dog 1.0 wrong, cat missing = 0: 1 + 1) = 0.18 + 1.28 + 2
    probs = [{"cat": 0.7, "dog": 0.3}, {"cat": 0.2, "dog": 0.8}, {"dog": 1.0}]
    assert brier_score(probs, ["cat", "cat", "cat"]) == pytest.approx(3.46 / 3)


# --- multi-label ---------------------------------------------------------------------------

ML_LABELS = ["cat", "dog", "indoor"]
ML_GOLD = [["cat", "indoor"], ["dog"], [], ["cat"], ["dog", "cat"]]
ML_PRED = [["indoor", "cat"], ["dog", "indoor"], [], None, ["dog"]]
# Hamming per example: 1, 1/2, 1 (both empty), 0 (invalid), 1/2 -> mean 3/5; exact: 2/5
# cat   : support 3 (ex 0, 3, 4), predicted 1 (ex 0), TP 1 -> P 1,   R 1/3, F1 1/2
# dog   : support 2 (ex 1, 4),    predicted 2 (ex 1, 4), TP 2 -> P 1, R 1, F1 1
# indoor: support 1 (ex 0),       predicted 2 (ex 0, 1), TP 1 -> P 1/2, R 1, F1 2/3
# macro-F1 = (1/2 + 1 + 2/3) / 3 = 13/18


def test_multilabel_hand_example():
    m = multilabel_metrics(ML_GOLD, ML_PRED, ML_LABELS)
    assert m["exact_match"] == pytest.approx(0.4)
    assert m["hamming"] == pytest.approx(0.6)
    assert m["n_invalid"] == 1
    assert m["macro_f1"] == pytest.approx(13 / 18)
    _check_per_class(m["per_label"], {"cat": (1.0, 1 / 3, 0.5, 3), "dog": (1.0, 1.0, 1.0, 2),
                                      "indoor": (0.5, 1.0, 2 / 3, 1)})
    # An invalid answer is wrong even when gold is the empty set.
    assert multilabel_metrics([[]], [None], ML_LABELS)["hamming"] == 0.0
    with pytest.raises(ValueError, match=r"predicted labels \['horse'\]"):
        multilabel_metrics([["cat"]], [["horse"]], ML_LABELS)


def test_compute_metrics_multi_label():
    m = compute_metrics(_records(ML_GOLD, ML_PRED), output_kind="multi_label", labels=ML_LABELS, n_boot=200)
    json.dumps(m, allow_nan=False)
    assert m["accuracy"] == pytest.approx(0.4) and m["exact_match"] == pytest.approx(0.4)
    assert m["hamming"] == pytest.approx(0.6)
    assert m["hamming_ci"]["low"] <= 0.6 <= m["hamming_ci"]["high"]
    assert (m["n_valid"], m["n_invalid"]) == (4, 1)
    assert m["calibration"]["n"] == 0 and m["ece"] is None


# --- multi-field ---------------------------------------------------------------------------

FIELDS = {"make": ["audi", "bmw"], "year": ["2011", "2012"]}
MF_GOLD = [
    {"make": "audi", "year": "2012"},
    {"make": "bmw", "year": "2011"},
    {"make": "audi", "year": "2011"},
    {"make": "bmw", "year": "2012"},
]
MF_PRED = [
    {"make": "audi", "year": "2012"},  # both right
    {"make": "bmw", "year": "2012"},  # make right, year wrong
    None,  # invalid: wrong in every field
    {"make": "audi"},  # make wrong, year missing -> invalid for year only
]
# exact 1/4; make accuracy 2/4; year accuracy 1/4; mean field accuracy 3/8
# make confusion (audi, bmw, invalid): audi [1, 0, 1]; bmw [1, 1, 0]
# year confusion (2011, 2012, invalid): 2011 [0, 1, 1]; 2012 [0, 1, 1]


def test_multifield_hand_example():
    m = multifield_metrics(MF_GOLD, MF_PRED, FIELDS)
    assert m["exact_match"] == pytest.approx(0.25)
    assert m["per_field"]["make"]["accuracy"] == pytest.approx(0.5)
    assert m["per_field"]["year"]["accuracy"] == pytest.approx(0.25)
    assert m["field_accuracy"] == pytest.approx(0.375)
    assert m["per_field"]["make"]["confusion"]["matrix"] == [[1, 0, 1], [1, 1, 0]]
    assert m["per_field"]["year"]["confusion"]["matrix"] == [[0, 1, 1], [0, 1, 1]]
    assert m["n_invalid"] == 1  # one whole output invalid; the missing field is per-field only
    assert m["per_field"]["year"]["n_invalid"] == 2


def test_compute_metrics_multi_field():
    records = _records(MF_GOLD, MF_PRED, confidence=[0.9, 0.9, None, 0.2])
    m = compute_metrics(records, output_kind="multi_field", fields=FIELDS, n_boot=200)
    json.dumps(m, allow_nan=False)
    assert m["accuracy"] == pytest.approx(0.25) and m["field_accuracy"] == pytest.approx(0.375)
    assert (m["n_valid"], m["n_invalid"]) == (3, 1)
    # bin [0.9, 1.0]: conf 0.9, acc 1/2 -> gap 0.4 (weight 2/3); bin [0.2, 0.3): conf 0.2, acc 0 (weight 1/3)
    assert m["ece"] == pytest.approx(0.4 * 2 / 3 + 0.2 / 3)


# --- latency and tokens --------------------------------------------------------------------


def test_latency_and_tokens_summaries():
    assert latency_summary([2.0, 1.0, 3.0])["p50_s"] == pytest.approx(2.0)
    assert latency_summary([])["p95_s"] is None
    assert token_summary([None, None], [3, None]) == {
        "prompt_mean": None, "completion_mean": 3.0, "n_prompt": 0, "n_completion": 1,
    }


# --- records -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gold", "predicted"),
    [("cat", "dog"), (["cat", "indoor"], ["cat"]), ({"make": "audi", "year": "2012"}, {"make": "bmw", "year": "2012"})],
)
def test_record_json_round_trip_keeps_the_answer_shape(gold, predicted):
    record = PredictionRecord(id="x", gold=gold, predicted=predicted, raw="...", valid=True, confidence=0.5,
                              probabilities={"cat": 0.5}, latency_s=0.25, prompt_tokens=12, completion_tokens=3)
    line = record.to_json()
    assert "\n" not in line
    back = PredictionRecord.from_json(line)
    assert back == record and type(back.gold) is type(gold) and type(back.predicted) is type(predicted)


def test_record_refuses_inconsistent_validity():
    with pytest.raises(pydantic.ValidationError, match="valid=False must have predicted=None"):
        PredictionRecord(id="x", gold="cat", predicted="pug", valid=False)
    with pytest.raises(pydantic.ValidationError, match="valid=True needs a predicted value"):
        PredictionRecord(id="x", gold="cat", predicted=None, valid=True)
    with pytest.raises(pydantic.ValidationError):
        PredictionRecord(id="x", gold="cat", predicted="cat", valid=True, confidence=1.5)


# --- DSPy metrics --------------------------------------------------------------------------


def _example(**labels) -> dspy.Example:
    return dspy.Example(image="img.png", **labels).with_inputs("image")


def test_label_accuracy_on_dspy_objects():
    gold = _example(label="cat")
    assert label_accuracy(gold, dspy.Prediction(label="cat")) is True
    assert label_accuracy(gold, dspy.Prediction(label="dog")) is False
    assert label_accuracy(gold, dspy.Prediction(label="Cat")) is False  # exact: never normalised
    assert label_accuracy(gold, dspy.Prediction(label=None)) is False
    assert label_accuracy(gold, dspy.Prediction()) is False
    assert label_accuracy(gold, dspy.Prediction(label="cat"), trace=[]) is True


def test_multilabel_metrics_on_dspy_objects():
    gold = _example(label=["cat", "dog"])
    half = dspy.Prediction(label=["dog"])
    assert multilabel_hamming(gold, half) == pytest.approx(0.5)
    assert multilabel_hamming(gold, half, trace=[]) is False  # bootstrapping wants a whole answer
    assert multilabel_hamming(gold, dspy.Prediction(label=["dog", "cat"]), trace=[]) is True
    assert multilabel_hamming(gold, dspy.Prediction(label=None)) == 0.0
    assert multilabel_exact(gold, dspy.Prediction(label=["dog", "cat", "dog"])) is True


def test_multifield_metrics_on_dspy_objects():
    gold = _example(make="audi", year="2012", id="row7")  # id: a non-input key that is not a field
    half = dspy.Prediction(make="audi", year="2011")
    mean, exact = multifield_mean(["make", "year"]), multifield_exact(["make", "year"])
    assert mean(gold, half) == pytest.approx(0.5)
    assert mean(gold, half, trace=[]) is False
    assert exact(gold, half) is False
    assert exact(gold, dspy.Prediction(make="audi", year="2012")) is True
    assert mean(gold, dspy.Prediction(make="audi")) == pytest.approx(0.5)
    assert mean.__name__ == "multifield_mean"


def test_metric_for_picks_by_output_kind():
    assert metric_for("single_label") is label_accuracy
    assert metric_for("multi_label") is multilabel_hamming
    assert metric_for("multi_label", partial_credit=False) is multilabel_exact
    assert metric_for("multi_field", fields=["make"]).__name__ == "multifield_mean"
    with pytest.raises(ValueError, match="field names"):
        metric_for("multi_field")
    with pytest.raises(ValueError, match="unknown output_kind 'boxes'"):
        metric_for("boxes")


def test_metric_runs_inside_dspy_evaluate():
    # A program that answers from a lookup table (no LM needed) scored by DSPy's own evaluator.
    answers = {"a.png": "cat", "b.png": "dog", "c.png": "cat", "d.png": "cat"}

    class Lookup(dspy.Module):
        def forward(self, image):
            return dspy.Prediction(label=answers[image])

    devset = [dspy.Example(image=k, label=v).with_inputs("image")
              for k, v in [("a.png", "cat"), ("b.png", "dog"), ("c.png", "dog"), ("d.png", "cat")]]
    result = dspy.Evaluate(devset=devset, metric=metric_for("single_label"), num_threads=1,
                           display_progress=False)(Lookup())
    assert result.score == pytest.approx(75.0)


# --- plots and table -----------------------------------------------------------------------


def _assert_png(path, size):
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        low, high = image.convert("L").getextrema()
        assert low < high  # something was drawn


def test_confusion_matrix_png(tmp_path):
    confusion = single_label_metrics(GOLD, PRED, LABELS)["confusion"]
    out = plot_confusion_matrix(confusion, tmp_path / "sub" / "confusion.png", figsize=(6, 5), dpi=100)
    _assert_png(out, (600, 500))
    with pytest.raises(ValueError, match="does not match"):
        plot_confusion_matrix({"labels": ["a"], "matrix": [[1, 0], [0, 1]]}, tmp_path / "bad.png")


def test_reliability_png(tmp_path):
    calib = calibration([0.3, 0.35, 0.85, 1.0], [False, True, False, True], n_bins=5)
    out = plot_reliability(calib, tmp_path / "reliability.png", dpi=80)
    _assert_png(out, (400, 400))
    with pytest.raises(ValueError, match="no confidences"):
        plot_reliability(calibration([], []), tmp_path / "empty.png")


def test_summary_table_renders_the_headline_numbers():
    records = _records(GOLD, PRED, latency_s=[0.2] * 10)
    m = compute_metrics(records, output_kind="single_label", labels=LABELS, n_boot=200)
    console = Console(file=io.StringIO(), width=120)
    console.print(summary_table(m, title="test split"))
    text = console.file.getvalue()
    assert "test split" in text
    assert "accuracy" in text and "0.500" in text
    assert "8 valid, 2 invalid (20.0%)" in text
    assert f"{23 / 42:.3f}" in text  # macro-F1
    assert "200 ms" in text
    assert "ECE" not in text  # no confidences recorded -> no calibration row


def test_summary_table_multi_field_rows():
    m = compute_metrics(_records(MF_GOLD, MF_PRED), output_kind="multi_field", fields=FIELDS, n_boot=100)
    console = Console(file=io.StringIO(), width=120)
    console.print(summary_table(m))
    text = console.file.getvalue()
    assert "exact match" in text and "0.250" in text
    assert "make" in text and "year" in text and "0.375" in text


def test_summary_json_types_are_plain_python():
    m = compute_metrics(_records(GOLD, PRED), output_kind="single_label", labels=LABELS, n_boot=50)

    def walk(value):
        assert not isinstance(value, np.generic), type(value)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(m)
