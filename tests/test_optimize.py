"""The optimizer really optimizes, the held-out protocol holds, artifacts freeze and verify.

Random-weight VLMs cannot show a prompt changing accuracy, so the task model here is the
scripted test double at the model edge (``vlmopt.testing.scripted_engine``): it answers right
under one instruction and badly under the others. Everything else — dataset loading, DSPy's
MIPROv2 and Optuna study, Evaluate, the cache, the run directory, the artifact — is real.
"""

import json
from pathlib import Path

import dspy
import pytest

from study_task import GOOD, colour_of, make_colour_folder, study_config
from vlmopt.artifacts import ArtifactError, canonical_sha256, load_artifact, read_verified, save_artifact
from vlmopt.evaluate import evaluate_program
from vlmopt.pipeline import optimize_task
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm


def scripted_vlm(call) -> str:
    """Right under GOOD; with demos only red and blue are learnt; otherwise always 'cat'."""
    truth = colour_of(call.query_image)
    if GOOD in call.system:
        label = truth
    elif call.n_demos and truth != "bird":
        label = truth
    else:
        label = "cat"
    return json.dumps({"label": label})


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory) -> Path:
    return make_colour_folder(tmp_path_factory.mktemp("colours"), per_class=10, step=2)


def make_config(folder: Path, tmp_path: Path, **optimizer):
    return study_config(folder, tmp_path, seed=3, **{"num_trials": 6, **optimizer})


@pytest.fixture(scope="module")
def optimized(colour_folder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("opt")
    cfg = make_config(colour_folder, tmp)
    engine = ScriptedEngine(scripted_vlm)
    cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"compare": ["labeled_fewshot"]})})
    outcome = optimize_task(cfg, lm=scripted_lm(engine, name="colours-opt", cache=True))
    return cfg, outcome, engine


def test_optimized_beats_baseline_and_best_candidate_is_chosen(optimized):
    cfg, outcome, _ = optimized
    base_val = outcome.baseline["val"].metrics["accuracy"]
    opt_val = outcome.optimized["val"].metrics["accuracy"]
    assert base_val == pytest.approx(1 / 3)
    assert opt_val == 1.0 > base_val
    assert outcome.optimized["test"].metrics["accuracy"] > outcome.baseline["test"].metrics["accuracy"]
    full = [row for row in outcome.history if row["scope"] == "full"]
    assert max(row["score"] for row in full) == pytest.approx(opt_val)
    best_row = max(full, key=lambda row: row["score"])
    assert best_row["instruction"] == GOOD


def test_comparison_optimizer_is_reported_on_the_same_test_split(optimized):
    _, outcome, _ = optimized
    labeled = outcome.comparisons["labeled_fewshot"]
    assert {r.id for r in labeled.records} == {r.id for r in outcome.optimized["test"].records}
    # the scripted model learns red and blue from demos, never green: 2 of 3 classes right
    assert labeled.metrics["accuracy"] == pytest.approx(2 / 3)
    assert (outcome.run.path / "labeled_fewshot_metrics.json").is_file()
    from rich.console import Console

    from vlmopt.reports.comparison_table import comparison_table

    console = Console(width=200, record=True)
    console.print(comparison_table(outcome))
    assert "labeled_fewshot (n=12)" in console.export_text()


def test_run_directory_holds_the_protocol(optimized):
    cfg, outcome, _ = optimized
    run = outcome.run.path
    for name in ("config.yaml", "predictions.jsonl", "metrics.json", "baseline_metrics.json", "trials.json",
                 "prompt.json", "artifact.json", "report.html", "baseline/predictions.jsonl"):
        assert (run / name).is_file(), name
    test_ids = {r.id for r in outcome.optimized["test"].records}
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == test_ids and len(rows) == len(test_ids) == 12
    trials = json.loads((run / "trials.json").read_text())
    assert trials["demo_effect"]["0"] == 1.0  # GOOD needs no demos; zero-shot stays a candidate
    report = (run / "report.html").read_text()
    assert 'id="demo-effect"' in report and "Effect of few-shot demos" in report
    assert GOOD in trials["instruction_candidates"] and "Classify the animal." in trials["instruction_candidates"]
    prompt = json.loads((run / "prompt.json").read_text())
    assert prompt["messages"][0] == {"role": "system", "content": GOOD}
    assert "{image}" in json.dumps(prompt["messages"][-1])
    assert prompt["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == ["cat", "dog", "bird"]


def test_the_run_records_its_cost_and_compares_as_baseline_and_optimized_rows(optimized):
    """What `vlmopt report RUN ...` reads (reports/run_comparison.py): method, model calls, wall, split fingerprint."""
    from vlmopt.reports.run_comparison import check_same_test_set, collect_runs

    _, outcome, _ = optimized
    optimized_metrics = json.loads((outcome.run.path / "metrics.json").read_text())
    baseline_metrics = json.loads((outcome.run.path / "baseline_metrics.json").read_text())
    assert optimized_metrics["method"] == "prompt-optimized" and baseline_metrics["method"] == "prompt-baseline"
    assert optimized_metrics["model_calls"] == outcome.model_calls > baseline_metrics["model_calls"] > 0
    assert optimized_metrics["wall_s"] > baseline_metrics["wall_s"] > 0
    rows = collect_runs([outcome.run.path])
    assert [r.label for r in rows] == ["baseline prompt", "optimized prompt"] and check_same_test_set(rows) == {}
    assert rows[0].fingerprint == rows[1].fingerprint is not None


def test_artifact_reloads_and_reproduces_val_accuracy(optimized):
    cfg, outcome, engine = optimized
    frozen = load_artifact(outcome.artifact, expected_labels=["cat", "dog", "bird"])
    assert frozen.program.signature.instructions == GOOD
    recorded = frozen.artifact.metrics["val"]["accuracy"]
    val = outcome.optimized["val"]
    examples = [dspy.Example(image=_img(r.thumbnail), label=r.gold, id=r.id).with_inputs("image") for r in val.records]
    replay = evaluate_program(frozen.program, examples, lm=scripted_lm(engine, name="colours-replay"),
                              task=frozen.task, labels=frozen.labels, num_threads=2)
    assert replay.metrics["accuracy"] == recorded
    for demo in frozen.program.predict.demos:
        assert isinstance(demo.image, dspy.Image) and demo.image.url.startswith("data:image/")


def _img(uri: str) -> dspy.Image:
    return dspy.Image(uri)


def test_tampered_truncated_wrong_version_and_other_labels_are_rejected(optimized, tmp_path):
    _, outcome, _ = optimized
    original = outcome.artifact.read_text()
    data = json.loads(original)

    tampered = tmp_path / "tampered.json"
    data_t = json.loads(original)
    data_t["prompt"]["messages"][0]["content"] = "Always answer dog."
    tampered.write_text(json.dumps(data_t))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        load_artifact(tampered)

    truncated = tmp_path / "truncated.json"
    truncated.write_text(original[: len(original) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load_artifact(truncated)

    future = tmp_path / "future.json"
    future.write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format version 99 is not supported"):
        load_artifact(future)

    with pytest.raises(ArtifactError, match="config's labels are"):
        load_artifact(outcome.artifact, expected_labels=["cat", "dog"])

    mistyped = tmp_path / "mistyped.json"  # re-hashed, so only the typed sections can catch it
    data_m = json.loads(original)
    data_m["generation"]["adapter"] = "xml"
    data_m["sha256"] = canonical_sha256(data_m)
    mistyped.write_text(json.dumps(data_m))
    with pytest.raises(ArtifactError, match="section 'generation.adapter' is not what a vlmopt artifact holds"):
        load_artifact(mistyped)


def test_a_first_format_1_artifact_still_loads(optimized, tmp_path):
    """Files written before calibration and image preprocessing existed have neither key."""
    _, outcome, _ = optimized
    data = json.loads(outcome.artifact.read_text())
    for newer in ("decision", "image_preprocessing"):
        data.pop(newer)
    data["format_version"] = 1
    data["sha256"] = canonical_sha256(data)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    frozen = load_artifact(old)
    assert frozen.artifact.decision is None and frozen.program.label_weights is None
    assert frozen.artifact.content() == data  # nothing added, so the old hash keeps verifying


def test_whole_number_weights_survive_the_round_trip(optimized, tmp_path):
    """The hash is taken over the typed JSON, so pydantic's int -> float cannot break verification."""
    cfg, outcome, _ = optimized
    frozen = load_artifact(outcome.artifact)
    frozen.program.label_weights = {label: 2 for label in frozen.labels}
    path = save_artifact(frozen.program, cfg, frozen.labels, tmp_path / "weighted.json", metrics={}, provenance={})
    assert load_artifact(path).program.label_weights == {label: 2.0 for label in frozen.labels}


def test_the_typed_artifact_holds_the_file_exactly(optimized):
    """Every byte of meaning survives the typed model: its content is the file's JSON, hash and all."""
    _, outcome, _ = optimized
    artifact = read_verified(outcome.artifact)
    assert artifact.content() == json.loads(outcome.artifact.read_text())
    assert canonical_sha256(artifact.content()) == artifact.sha256


def test_rerun_of_a_finished_optimize_makes_zero_model_calls(colour_folder, tmp_path):
    cfg = make_config(colour_folder, tmp_path)
    first = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(scripted_vlm), name="colours-rerun", cache=True))
    assert first.model_calls > 0
    again = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(scripted_vlm), name="colours-rerun", cache=True))
    assert again.model_calls == 0
    assert again.optimized["test"].metrics["accuracy"] == first.optimized["test"].metrics["accuracy"]


def test_outer_search_picks_a_trial_and_the_protocol_freezes_it(colour_folder, tmp_path):
    cfg = make_config(colour_folder, tmp_path, search_trials=3, num_trials=2)
    lm = scripted_lm(ScriptedEngine(scripted_vlm), name="colours-search", cache=True)
    outcome = optimize_task(cfg, lm=lm, lm_factory=lambda trial_cfg: lm)
    assert len(outcome.history) == 3 and (outcome.run.path / "study.db").is_file()
    best = max(outcome.history, key=lambda row: row["score"])
    frozen = load_artifact(outcome.artifact)
    assert outcome.optimized["val"].metrics["accuracy"] == pytest.approx(best["score"], abs=1e-3)  # DSPy rounds
    assert frozen.artifact.metrics["val"]["accuracy"] == outcome.optimized["val"].metrics["accuracy"]
    assert any("outer search: 3 trials" in note for note in outcome.notes)
