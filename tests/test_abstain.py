"""Abstaining when unsure (``optimizer.abstain``): the threshold is chosen on val, reported on test, frozen
in the artifact and applied by evaluate and predict alike.

The task model is the scripted test double at the model edge (``vlmopt.testing.scripted_engine``):
it measures a label *distribution* per image, as the real engines do. On the colour task it is
sure and right on most shades and unsure on every fourth one, where it leans to a wrong label
(``UNSURE``) — so a threshold between the two confidences answers only the right ones. DSPy,
the pipeline, Evaluate, the cache, the artifact, the report and predict run for real.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study_task import centre, colour_of, make_colour_folder, study_config
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


def test_the_artifact_carries_the_threshold_and_evaluate_and_predict_apply_it_alike(abstaining, tmp_path):
    cfg, outcome, engine = abstaining
    data = json.loads(outcome.artifact.read_text())
    assert data["format_version"] == 3
    section = data["decision"]["abstain"]
    assert section["threshold"] == outcome.optimized["test"].metrics["selective"]["threshold"]
    assert section["goal"] == {"target_accuracy": 0.99} and section["chosen_on"] == "val" and section["val"]["met"]

    frozen = load_artifact(outcome.artifact, expected_labels=LABELS)
    splits = load_splits(cfg)
    lm = scripted_lm(engine, name="abstain", cache=True)
    again = evaluate_program(frozen.program, splits.test, lm=lm, task=frozen.task, labels=LABELS, num_threads=2,
                             seed=cfg.seed)
    by_id = {r.id: r for r in again.records}
    assert {i: r.abstained for i, r in by_id.items()} == {r.id: r.abstained for r in outcome.optimized["test"].records}
    assert again.metrics["selective"] == outcome.optimized["test"].metrics["selective"]

    paths = [ex.image_ref for ex in splits.test]
    summary = predict_to_file(frozen, paths, tmp_path / "rows.jsonl", lm=lm, num_threads=2)
    assert summary.complete
    rows = {row["id"]: row for row in map(json.loads, (tmp_path / "rows.jsonl").read_text().splitlines())}
    for ex in splits.test:
        row, record = rows[ex.image_ref], by_id[str(ex.id)]
        assert (row["abstained"], row["label"], row["confidence"]) == (record.abstained, record.predicted,
                                                                      record.confidence)
        assert row["top_labels"][0]["label"] == row["label"]  # an abstained row keeps its top label
        assert [t["probability"] for t in row["top_labels"]] == sorted(record.probabilities.values(), reverse=True)
    assert any(row["abstained"] for row in rows.values()) and not all(row["abstained"] for row in rows.values())


def test_a_tampered_threshold_is_refused(abstaining, tmp_path):
    _, outcome, _ = abstaining
    data = json.loads(outcome.artifact.read_text())
    data["decision"]["abstain"]["threshold"] = 0.0  # answer everything, hash left as it was
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(tampered)
    data["decision"]["abstain"]["confidence"] = "entropy"  # re-hashed, but not a confidence vlmopt knows
    data["sha256"] = canonical_sha256(data)
    tampered.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="decision.abstain.confidence"):
        load_artifact(tampered)


@pytest.mark.parametrize(("name", "version"), [("artifact_format1.json", 1), ("artifact_format2.json", 2)])
def test_artifacts_written_before_format_3_still_load_and_decide_as_before(name, version, tmp_path):
    path = Path(__file__).parent / "old_artifacts" / name
    frozen = load_artifact(path, expected_labels=LABELS)
    assert frozen.artifact.format_version == version and frozen.program.abstention is None
    assert (frozen.program.label_weights is not None) == (version == 2)
    leans_to_dog = {"cat": {"cat": 0.35, "dog": 0.45, "bird": 0.20}, "dog": {"cat": 0.10, "dog": 0.80, "bird": 0.10},
                    "bird": {"cat": 0.10, "dog": 0.30, "bird": 0.60}}
    cfg = abstain_config(tmp_path)
    lm = scripted_lm(ScriptedEngine(lambda call: leans_to_dog[colour_of(call.query_image)]), name=f"old-{version}")
    outcome = evaluate_program(frozen.program, load_splits(cfg).val, lm=lm, task=frozen.task, labels=LABELS,
                               num_threads=2)
    cats = [r.predicted for r in outcome.records if r.gold == "cat"]
    assert set(cats) == ({"cat"} if version == 2 else {"dog"})  # the calibrated decision still applies
    assert "selective" not in outcome.metrics and not any(r.abstained for r in outcome.records)


def test_the_report_shows_the_threshold_val_and_test_and_the_curve(abstaining):
    _, outcome, _ = abstaining
    text = (outcome.run.path / "report.html").read_text()
    panel = text[text.index('id="abstention"'):]
    panel = panel[: panel.index("</section>")]
    test = outcome.optimized["test"].metrics["selective"]
    assert "target accuracy 0.99" in panel and f"test (n={test['n']})" in panel
    assert f"{test['coverage']:.3f}" in panel and 'src="data:image/png;base64,' in panel
    assert f'id="n-abstained">{test["n_abstained"]}<' in text
    assert text.count('data-abstained="1"') == test["n_abstained"]


def test_the_closing_table_and_export_say_what_abstention_does(abstaining):
    from rich.console import Console

    from vlmopt.reports.comparison_table import comparison_table

    _, outcome, _ = abstaining
    console = Console(width=250, record=True)
    console.print(comparison_table(outcome))
    shown = console.export_text()
    test = outcome.optimized["test"].metrics["selective"]
    assert "coverage, abstaining" in shown and f"{test['coverage']:.3f}" in shown
    result = CliRunner().invoke(app, ["export", "--artifact", str(outcome.artifact)], env={"COLUMNS": "250"})
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "a replay never abstains" in said and "P(top1) - P(top2)" in said
    prompt = json.loads(CliRunner().invoke(app, ["export", "--artifact", str(outcome.artifact), "--format",
                                                 "prompt-json"]).stdout)
    assert prompt["decision"]["abstain"]["threshold"] == test["threshold"]


def test_a_backend_without_label_probabilities_is_refused_before_any_call(abstaining, tmp_path):
    _, outcome, _ = abstaining
    image = next((outcome.run.path.parent.parent / "data" / "cat").glob("*.png"))
    config = tmp_path / "no-probabilities.yaml"
    config.write_text(json.dumps({"model": {"id": "scripted"}, "dataset": {"source": "-"}, "backend": {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "label_probabilities": False}}))
    result = CliRunner().invoke(app, ["predict", str(image), "--artifact", str(outcome.artifact),
                                      "--config", str(config), "-o", str(tmp_path / "out.jsonl")])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "abstains below a confidence" in said and "label_probabilities: true" in said
    assert not (tmp_path / "out.jsonl").exists()


def test_an_abstaining_program_refuses_a_prediction_without_a_distribution(abstaining):
    import dspy

    from vlmopt.programs.decision import UnmeasuredDecisionError

    cfg, outcome, _ = abstaining
    frozen = load_artifact(outcome.artifact)
    text_only = ScriptedEngine(lambda call: json.dumps({"label": "cat"}))
    with dspy.context(lm=scripted_lm(text_only, name="text-only-abstain")), \
            pytest.raises(UnmeasuredDecisionError, match="abstains below a confidence"):
        frozen.program(image=load_splits(cfg).val[0].image)


def test_a_coverage_goal_answers_that_share_of_val(tmp_path):
    cfg = abstain_config(tmp_path, coverage=0.5, confidence="margin")
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(measured), name="coverage", cache=True))
    val = outcome.optimized["val"].metrics["selective"]
    assert val["confidence"] == "margin" and val["coverage"] >= 0.5
    assert val["accuracy_answered"] == 1.0  # the sure ones are answered first


@pytest.mark.parametrize(("abstain", "says"), [
    ({}, "exactly one goal"),
    ({"target_accuracy": 0.9, "coverage": 0.8}, "exactly one goal"),
    ({"target_accuracy": 1.5}, "less than or equal to 1"),
])
def test_the_abstain_config_names_what_is_wrong(abstain, says):
    with pytest.raises(ConfigError, match=says):
        parse_config({"dataset": {"source": "x"}, "optimizer": {"abstain": abstain}}, "task.yaml")


def test_abstention_needs_measured_probabilities():
    raw = {"dataset": {"source": "x"}, "task": {"labels": LABELS, "structured_generation": False},
           "optimizer": {"abstain": {"coverage": 0.9}}}
    with pytest.raises(ConfigError, match="optimizer.abstain: .*task.structured_generation: true"):
        parse_config(raw, "task.yaml")


def test_the_cli_goal_flags_set_the_config_and_refuse_two_goals(tmp_path):
    cfg = abstain_config(tmp_path)
    config = tmp_path / "task.yaml"
    config.write_text(cfg.model_dump_yaml())
    result = CliRunner().invoke(app, ["optimize", str(config), "--target-accuracy", "0.9", "--coverage", "0.8"])
    assert result.exit_code == 2 and "two goals" in result.output
    from vlmopt.cli import _abstain_settings
    from vlmopt.cli_choices import AbstainConfidence

    assert _abstain_settings({"target_accuracy": 0.99, "coverage": None, "confidence": "auto"}, None, 0.8,
                             AbstainConfidence.margin) == {"target_accuracy": None, "coverage": 0.8,
                                                            "confidence": "margin"}
    assert _abstain_settings(None, None, None, None) is None
