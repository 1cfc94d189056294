"""The pure selective-classification functions: curve, threshold choice, figures at a threshold."""

import pytest

from vlmopt.metrics.selective import answers, choose_threshold, confidence_of, risk_coverage, selective_metrics

CONF = [0.95, 0.9, 0.9, 0.8, 0.6, 0.55, None]
RIGHT = [True, True, False, True, False, True, False]


def test_confidences_are_max_prob_and_margin():
    p = {"cat": 0.6, "dog": 0.3, "bird": 0.1}
    assert confidence_of(p, "max_prob") == 0.6 and confidence_of(p, "margin") == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown confidence"):
        confidence_of(p, "entropy")


def test_the_curve_answers_ties_together_and_never_answers_an_unmeasured_item():
    curve = risk_coverage(CONF, RIGHT)
    assert [p["n_answered"] for p in curve] == [1, 3, 4, 5, 6]  # 0.9 twice: one point
    assert curve[1]["accuracy"] == pytest.approx(2 / 3) and curve[-1]["coverage"] == pytest.approx(6 / 7)


def test_a_target_accuracy_takes_the_largest_coverage_that_meets_it():
    choice = choose_threshold(CONF, RIGHT, target_accuracy=0.75)
    assert choice["met"] and choice["n_answered"] == 4 and choice["accuracy"] == 0.75
    assert choice["threshold"] == pytest.approx((0.8 + 0.6) / 2)  # midway to the next confidence
    answered = [c for c in CONF if answers(c, choice["threshold"])]
    assert len(answered) == choice["n_answered"]


def test_an_unreachable_target_abstains_on_everything_and_says_so():
    choice = choose_threshold([0.7, 0.6], [False, True], target_accuracy=0.99)
    assert not choice["met"] and choice["coverage"] == 0.0 and choice["threshold"] > 0.7
    assert choose_threshold([1.0], [False], target_accuracy=0.9)["threshold"] > 1.0


def test_a_coverage_goal_takes_the_strictest_threshold_that_answers_enough():
    choice = choose_threshold(CONF, RIGHT, coverage=0.4)
    assert choice["met"] and choice["n_answered"] == 3  # 1/7 is too few, 3/7 >= 0.4
    assert choose_threshold(CONF, RIGHT, coverage=0.95)["met"] is False  # the unmeasured item is never answered
    with pytest.raises(ValueError, match="exactly one goal"):
        choose_threshold(CONF, RIGHT)


def test_the_figures_at_a_threshold_count_answered_abstained_and_invalid_apart():
    m = selective_metrics([True, False, False, False], [True, True, False, False], [True, True, True, False])
    assert (m["n_answered"], m["n_abstained"], m["n_invalid"]) == (2, 1, 1)
    assert m["coverage"] == 0.5 and m["accuracy_answered"] == 0.5 and m["accuracy_overall"] == 0.5
    assert m["accuracy_answered_ci"]["low"] <= 0.5 <= m["accuracy_answered_ci"]["high"]
    nothing = selective_metrics([True], [True], [True])
    assert nothing["accuracy_answered"] is None and nothing["accuracy_answered_ci"] is None


def test_no_measured_distribution_on_val_is_a_one_line_error():
    from vlmopt.config import AbstainConfig
    from vlmopt.metrics.records import PredictionRecord
    from vlmopt.optimizers.abstention import NothingToThreshold, choose_abstention

    invalid = [PredictionRecord(id="a", gold="cat", predicted=None, valid=False)]
    with pytest.raises(NothingToThreshold, match="backend.label_probabilities"):
        choose_abstention(invalid, AbstainConfig(coverage=0.9))
