"""ReAnchor calibration of the label decision after the search (``optimizer.calibrate``).

The task model in the optimize tests is the scripted test double at the model edge
(``vlmopt.testing.scripted_engine``): it answers with a label *distribution*, attached the way the
real engines attach measured probabilities, and leans toward "dog" as small VLMs lean toward one
label — a red (cat) image gets ``cat 0.35 / dog 0.45 / bird 0.20``, so the plain argmax calls
every cat a dog. DSPy's ReAnchor, the pipeline, Evaluate, the cache and the artifact run for
real. The last test runs the measured-distribution client on the real in-process engine.
"""

import html as html_lib
import json
import math
import re

import dspy
import pytest
from rich.console import Console
from typer.testing import CliRunner

from study_task import GOOD, colour_of, make_colour_folder, study_config
from vlmopt.artifacts import ArtifactError, canonical_sha256, load_artifact
from vlmopt.cli import app
from vlmopt.config import ConfigError, parse_config
from vlmopt.datasets import load_splits
from vlmopt.datasets.images import dspy_image_to_pil
from vlmopt.evaluate import evaluate_program
from vlmopt.export import decision_caveat, export_prompt
from vlmopt.metrics import metric_for
from vlmopt.optimizers.reanchor import MeasuredLabelClient, calibrate_decision
from vlmopt.optimizers.search_space import SearchSpace
from vlmopt.pipeline import configure_cache, optimize_task
from vlmopt.programs import create_program
from vlmopt.programs.decision import UnmeasuredDecisionError, weighted_label
from vlmopt.reports.comparison_table import comparison_table
from vlmopt.serving.transformers_engine import create_lm
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm

LABELS = ["cat", "dog", "bird"]
LEANS_TO_DOG = {
    "cat": {"cat": 0.35, "dog": 0.45, "bird": 0.20},
    "dog": {"cat": 0.10, "dog": 0.80, "bird": 0.10},
    "bird": {"cat": 0.10, "dog": 0.30, "bird": 0.60},
}
SHARP = {truth: {k: 0.8 if k == truth else 0.1 for k in LABELS} for truth in LABELS}


def answers(table):
    return lambda call: table[colour_of(call.query_image)]


def colour_config(tmp_path, **optimizer):
    folder = make_colour_folder(tmp_path / "data")
    return study_config(folder, tmp_path, num_candidates=1, num_trials=1, instructions=[GOOD], **optimizer)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrated")
    cfg = colour_config(tmp, calibrate=True)
    engine = ScriptedEngine(answers(LEANS_TO_DOG))
    outcome = optimize_task(cfg, lm=scripted_lm(engine, name="leans-to-dog", cache=True))
    outcome.engine_requests = engine.stats.requests  # before other tests reuse the engine
    return cfg, outcome, engine


def test_reanchor_weights_win_on_val_and_the_gain_holds_on_test(calibrated):
    _, outcome, _ = calibrated
    for split in ("val", "test"):
        records = outcome.argmax[split].records
        assert {r.predicted for r in records if r.gold == "cat"} == {"dog"}  # the plain argmax: every cat a dog
        not_cats = sum(r.gold != "cat" for r in records) / len(records)
        assert outcome.argmax[split].metrics["accuracy"] == pytest.approx(not_cats) and not_cats < 1
        assert outcome.optimized[split].metrics["accuracy"] == 1.0
        # the two decisions share one set of model calls: the replayed side reports their cost
        for key in ("latency", "tokens"):
            assert outcome.argmax[split].metrics[key] == outcome.optimized[split].metrics[key]
    summary = json.loads((outcome.run.path / "calibration.json").read_text())
    assert summary["kept"] is True and summary["method"] == "dspy.experimental.ReAnchor"
    # a cat wins when w_cat * 0.35 > 0.45, and a dog stays a dog while w_cat * 0.10 < 0.80
    assert 0.45 / 0.35 < summary["weights"]["cat"] / summary["weights"]["dog"] < 8
    (row,) = summary["reanchor"]["fitted"]
    assert row["parameter"] == "weights" and row["fold_check"]["passed"] >= 1
    for split in ("val", "test"):
        assert summary[split]["before"]["accuracy"] == outcome.argmax[split].metrics["accuracy"]
        assert summary[split]["after"]["accuracy"] == outcome.optimized[split].metrics["accuracy"]
        assert summary[split]["after"]["brier"] < summary[split]["before"]["brier"]


def test_test_split_records_and_artifact_hold_the_calibrated_decision(calibrated):
    _, outcome, _ = calibrated
    weights = json.loads((outcome.run.path / "calibration.json").read_text())["weights"]
    rows = [json.loads(line) for line in (outcome.run.path / "predictions.jsonl").read_text().splitlines()]
    cat = next(row for row in rows if row["gold"] == "cat")
    scores = {k: p * weights[k] for k, p in LEANS_TO_DOG["cat"].items()}
    assert cat["predicted"] == "cat"
    assert cat["confidence"] == pytest.approx(scores["cat"] / sum(scores.values()))
    data = json.loads(outcome.artifact.read_text())
    assert data["format_version"] == 2 and data["decision"]["weights"] == weights
    assert data["metrics"]["calibration"]["test"]["after"]["accuracy"] == 1.0


def test_reloaded_artifact_reproduces_the_calibrated_val_accuracy(calibrated):
    cfg, outcome, engine = calibrated
    frozen = load_artifact(outcome.artifact, expected_labels=LABELS)
    assert frozen.program.label_weights == json.loads(outcome.artifact.read_text())["decision"]["weights"]
    val = outcome.optimized["val"]

    splits = load_splits(cfg)
    again = evaluate_program(frozen.program, splits.val, lm=scripted_lm(engine, name="leans-to-dog", cache=True),
                             task=frozen.task, labels=LABELS, num_threads=2)
    assert again.metrics["accuracy"] == val.metrics["accuracy"] == 1.0
    assert {r.id: r.predicted for r in again.records} == {r.id: r.predicted for r in val.records}


def test_calibration_adds_no_model_calls(calibrated, tmp_path):
    """ReAnchor's passes, the calibrated val and the argmax test replay calls already made."""
    _, outcome, _ = calibrated
    cfg = colour_config(tmp_path, calibrate=False)
    plain = ScriptedEngine(answers(LEANS_TO_DOG))
    optimize_task(cfg, lm=scripted_lm(plain, name="leans-to-dog-plain", cache=True))
    assert outcome.engine_requests == plain.stats.requests > 0


def test_export_carries_the_decision_and_warns_for_a_plain_request(calibrated):
    _, outcome, _ = calibrated
    frozen = load_artifact(outcome.artifact)
    assert export_prompt(frozen)["decision"]["weights"] == frozen.program.label_weights
    assert "calibrated" in decision_caveat(frozen)
    result = CliRunner().invoke(app, ["export", "--artifact", str(outcome.artifact)])
    assert result.exit_code == 0 and "returns the uncalibrated label" in result.output


def test_weights_are_not_kept_when_the_argmax_already_wins(tmp_path):
    cfg = colour_config(tmp_path, calibrate=True)
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(answers(SHARP)), name="sharp", cache=True))
    summary = json.loads((outcome.run.path / "calibration.json").read_text())
    assert summary["kept"] is False and summary["weights"] is None
    assert summary["val"]["before"] == summary["val"]["after"]
    data = json.loads(outcome.artifact.read_text())
    assert outcome.argmax == {} and data["decision"] is None
    assert data["format_version"] == 1  # no decision: readable by a vlmopt that predates calibration
    assert load_artifact(outcome.artifact).program.label_weights is None
    assert any("kept the plain argmax" in note for note in outcome.notes)


def test_unmeasured_distribution_is_a_note_not_a_crash(tmp_path):
    cfg = colour_config(tmp_path, calibrate=True)
    configure_cache(cfg)
    engine = ScriptedEngine(lambda call: json.dumps({"label": colour_of(call.query_image)}))

    program = create_program(cfg.task, LABELS)
    result = calibrate_decision(program, load_splits(cfg).val, lm=scripted_lm(engine, name="text-only"),
                                metric=metric_for("single_label"), num_threads=2)
    assert result.weights is None and "backend.label_probabilities" in result.note


def test_calibrated_program_refuses_an_unmeasured_prediction(tmp_path):
    cfg = colour_config(tmp_path)
    configure_cache(cfg)

    program = create_program(cfg.task, LABELS)
    program.label_weights = {"cat": 2.0, "dog": 1.0, "bird": 1.0}
    engine = ScriptedEngine(lambda call: json.dumps({"label": "dog"}))
    with dspy.context(lm=scripted_lm(engine, name="text-only-2")), pytest.raises(UnmeasuredDecisionError,
                                                                                 match="label_probabilities"):
        program(image=load_splits(cfg).val[0].image)


def test_weighted_label_is_dspy_choice_decoding():
    signature = create_program(parse_config({"dataset": {"source": "x"}}).task, LABELS).signature
    label, probabilities = weighted_label(signature, {"cat": 0.35, "dog": 0.45, "bird": 0.2},
                                          {"cat": 2.0, "dog": 1.0, "bird": 1.0})
    assert label == "cat" and math.isclose(sum(probabilities.values()), 1.0)
    assert probabilities["cat"] == pytest.approx(0.7 / 1.35)
    # a weighted tie (all scores 0.25) goes to the unweighted winner, not to declaration order
    assert weighted_label(signature, {"cat": 0.5, "dog": 0.25, "bird": 0.25}, {"cat": 0.5})[0] == "cat"
    assert weighted_label(signature, {"cat": 0.25, "dog": 0.25, "bird": 0.5}, {"bird": 0.5})[0] == "bird"


@pytest.mark.parametrize(
    ("task", "backend", "missing"),
    [
        ({"output": "multi_label", "labels": LABELS}, {}, "task.output: single_label"),
        ({"labels": LABELS, "reasoning": True}, {}, "task.reasoning: false"),
        ({"labels": LABELS, "structured_generation": False}, {}, "task.structured_generation: true"),
        ({"labels": LABELS}, {"label_probabilities": False}, "backend.label_probabilities: true"),
    ],
)
def test_calibrate_config_names_what_it_needs(task, backend, missing):
    raw = {"dataset": {"source": "x"}, "task": task, "backend": backend, "optimizer": {"calibrate": True}}
    with pytest.raises(ConfigError, match=missing):
        parse_config(raw, "task.yaml")


def test_measured_client_on_the_real_engine_answers_what_the_engine_measured(tiny_idefics3_dir, synthetic_data,
                                                                          tmp_path):
    """ReAnchor over the in-process engine: the distributions it decides on are the recorded ones."""
    cfg = parse_config({"dataset": {"source": str(synthetic_data.folder), "kind": "imagefolder", "max_image_side": 64},
                        "run": {"cache_dir": str(tmp_path / "cache")}, "optimizer": {"calibrate": True}})
    configure_cache(cfg)
    splits = load_splits(cfg)
    lm = create_lm(str(tiny_idefics3_dir), max_new_tokens=16)
    try:
        program = create_program(cfg.task, splits.labels)
        recorded = evaluate_program(program, splits.val, lm=lm, task=cfg.task, labels=splits.labels, num_threads=2)
        result = calibrate_decision(program, splits.val, lm=lm, metric=metric_for("single_label"), num_threads=2)
        assert result.report["train_score_before"] == pytest.approx(recorded.metrics["accuracy"], abs=1e-4)
        client = MeasuredLabelClient(program, lm)
        by_id = {record.id: record for record in recorded.records}
        for example in splits.val:
            assert client.measure(example.image.url) == pytest.approx(by_id[example.id].probabilities)
    finally:
        lm.engine.close()


def test_report_shows_the_calibration_before_and_after(calibrated):
    _, outcome, _ = calibrated
    html = (outcome.run.path / "report.html").read_text()
    panel = html[html.index('id="calibration"'):]
    panel = html_lib.unescape(re.sub(r"<[^>]+>", " ", panel[: panel.index("</section>")]))
    before, after = outcome.argmax["test"].metrics["accuracy"], outcome.optimized["test"].metrics["accuracy"]
    assert "kept" in panel and "cat" in panel
    assert f"test (n={outcome.optimized['test'].metrics['n']})" in panel and f"{before:.3f} → {after:.3f}" in panel


@pytest.mark.parametrize(
    ("settings", "fix"),
    [
        ({"backend": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "label_probabilities": False}},
         "backend.label_probabilities: true"),
        ({"task": {"labels": LABELS, "structured_generation": False}}, "task.structured_generation: true"),
    ],
)
def test_a_backend_without_label_probabilities_is_refused_before_any_call(calibrated, tmp_path, settings, fix):
    _, outcome, _ = calibrated
    image = next(iter(outcome.run.path.parent.parent.glob("data/cat/*.png")))
    config = tmp_path / "no-probabilities.yaml"
    config.write_text(json.dumps({"model": {"id": "scripted"}, "dataset": {"source": "-"}, **settings}))
    result = CliRunner().invoke(app, ["predict", str(image), "--artifact", str(outcome.artifact),
                                      "--config", str(config), "-o", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 2 and fix in " ".join(result.output.split())
    assert not (tmp_path / "out.jsonl").exists()


def test_decision_weights_for_unknown_labels_are_refused_even_with_a_valid_hash(calibrated, tmp_path):
    _, outcome, _ = calibrated
    data = json.loads(outcome.artifact.read_text())
    data["decision"]["weights"] = {"fish": 2.0}
    data["sha256"] = canonical_sha256(data)
    forged = tmp_path / "artifact.json"
    forged.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="outside the task"):
        load_artifact(forged)


def test_closing_table_sets_the_argmax_beside_the_calibrated_decision(calibrated):


    _, outcome, _ = calibrated
    console = Console(width=250, record=True)
    console.print(comparison_table(outcome))
    text = console.export_text()
    assert "optimized, argmax (n=10)" in text and "optimized + ReAnchor (n=10)" in text
    ece = next(line for line in text.splitlines() if "ECE" in line)
    assert f"{outcome.optimized['test'].metrics['ece']:.3f}" in ece


def test_invalid_val_answers_are_left_out_of_the_fit_and_counted(tmp_path):
    cfg = colour_config(tmp_path, calibrate=True)
    configure_cache(cfg)

    val = load_splits(cfg).val
    odd = val[0].image.url

    def answer(call):
        if call.query_image.getpixel((0, 0)) == dspy_image_pixel(odd):
            return "pug"  # not a label: an invalid answer, no distribution
        return LEANS_TO_DOG[colour_of(call.query_image)]

    lm = scripted_lm(ScriptedEngine(answer), name="one-pug")
    result = calibrate_decision(create_program(cfg.task, LABELS), val, lm=lm, metric=metric_for("single_label"),
                                num_threads=2)
    assert result.weights is not None
    assert f"fitted on {len(val) - 1} of {len(val)} val images" in result.note


def dspy_image_pixel(url):
    return dspy_image_to_pil(dspy.Image(url)).convert("RGB").getpixel((0, 0))


def test_outer_search_keeps_what_calibration_needs(tmp_path):
    space = SearchSpace.from_config(colour_config(tmp_path, calibrate=True))
    assert space.reasoning == (False,) and space.structured_generation == (True,)
    free = SearchSpace.from_config(colour_config(tmp_path / "free"))
    assert set(free.reasoning) == {False, True} and set(free.structured_generation) == {True, False}
