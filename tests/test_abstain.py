"""Abstaining when unsure (``optimizer.abstain``): the threshold is chosen on val, reported on test, frozen
in the artifact and applied by evaluate and predict alike.

The task model is the scripted test double at the model edge (``vlmopt.testing.scripted_engine``):
it measures a label *distribution* per image, as the real engines do. On the colour task it is
sure and right on most shades and unsure on every fourth one, where it leans to a wrong label
(``UNSURE``) — so a threshold between the two confidences answers only the right ones. DSPy,
the pipeline, Evaluate, the cache, the artifact, the report and predict run for real.
"""

import json

import pytest
from typer.testing import CliRunner

from study_task import COLOURS, colour_of, centre, make_colour_folder, study_config
from vlmopt.artifacts import ArtifactError, canonical_sha256, load_artifact
from vlmopt.cli import app
from vlmopt.config import ConfigError, parse_config
from vlmopt.datasets import load_splits
from vlmopt.evaluate import evaluate_program
from vlmopt.pipeline import optimize_task
from vlmopt.predict import predict_to_file
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm

LABELS = ["cat", "dog", "bird"]
PER_CLASS = 16
WRONG = {"cat": "dog", "dog": "bird", "bird": "cat"}
SURE, UNSURE = 0.9, 0.5  # the confidence (max_prob) of a sure and of an unsure answer


def shade_index(image) -> int:
    """Which image of its class this is (``make_colour_folder`` adds 3 per image to the 30-valued channel)."""
    rgb, truth = centre(image), colour_of(image)
    channel = 1 if truth == "cat" else 0
    return round((rgb[channel] - 30) / 3)


def unsure(image) -> bool:
    return shade_index(image) % 4 == 3


def measured(call):
    """Sure and right, or (every fourth shade) unsure and wrong: the distribution the engine measures."""
    image = call.query_image
    truth = colour_of(image)
    if unsure(image):
        return {WRONG[truth]: UNSURE, truth: 0.4, next(k for k in LABELS if k not in (truth, WRONG[truth])): 0.1}
    return {k: SURE if k == truth else (1 - SURE) / 2 for k in LABELS}


def abstain_config(tmp_path, **abstain):
    folder = make_colour_folder(tmp_path / "data", per_class=PER_CLASS)
    return study_config(folder, tmp_path, num_candidates=1, num_trials=1, instructions=["Name the colour."],
                        abstain=abstain or {"target_accuracy": 0.99})


@pytest.fixture(scope="module")
def abstaining(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abstain")
    cfg = abstain_config(tmp)
    engine = ScriptedEngine(measured)
    outcome = optimize_task(cfg, lm=scripted_lm(engine, name="abstain", cache=True))
    return cfg, outcome, engine


def test_threshold_meets_the_val_target_and_test_is_reported_as_it_falls(abstaining):
    _, outcome, _ = abstaining
    val, test = (outcome.optimized[s].metrics["selective"] for s in ("val", "test"))
    assert val["accuracy_answered"] >= 0.99 and val["n_abstained"] > 0
    n_unsure = sum(r.gold != r.predicted for r in outcome.optimized["val"].records)
    assert val["n_abstained"] == n_unsure and val["coverage"] == 1 - n_unsure / val["n"]
    assert UNSURE < val["threshold"] < SURE and val["confidence"] == "max_prob"  # auto: max_prob wins ties
    # test: the records say which were abstained on, and the figures are those records' own
    records = outcome.optimized["test"].records
    answered = [r for r in records if not r.abstained]
    assert test["coverage"] == len(answered) / len(records)
    assert test["accuracy_answered"] == sum(r.predicted == r.gold for r in answered) / len(answered)
    assert test["accuracy_overall"] == outcome.optimized["test"].metrics["accuracy"] < 1.0
    assert all(r.abstained == (r.confidence < val["threshold"]) for r in records)
    summary = json.loads((outcome.run.path / "abstention.json").read_text())
    assert summary["at_threshold"] == {"val": val, "test": test} and summary["val"]["coverage"] == val["coverage"]
    assert summary["curves"]["val"][0]["accuracy"] == 1.0 and summary["curves"]["val"][-1]["coverage"] == 1.0
    assert (outcome.run.path / "risk_coverage.png").stat().st_size > 1000
