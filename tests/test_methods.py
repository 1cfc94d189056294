"""Every search method under the held-out protocol: it runs end to end, chooses its best candidate
on val, freezes an artifact that replays exactly, spends a budget stated in model calls, and — for
GEPA and SIMBA — learns from the feedback text, which is shown to reach the writer's prompt.

The task model and the writing model are scripted test doubles at the model edge
(``method_task_doubles``); DSPy's MIPROv2, GEPA, SIMBA and random search, Evaluate, the cache, the
run directory and the artifact are real.
"""

import json

import dspy
import pytest
from rich.console import Console

from method_task_doubles import MethodVLM, feedback_writer
from study_task import GOOD, VAGUE, make_colour_folder, study_config
from vlmopt.artifacts import load_artifact
from vlmopt.config import ConfigError
from vlmopt.evaluate import evaluate_program
from vlmopt.pipeline import optimize_task
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm

BUDGET = 300
METHODS = ("mipro", "gepa", "simba", "random_search")


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory):
    return make_colour_folder(tmp_path_factory.mktemp("colours"), per_class=10, step=2)


def method_config(folder, workdir, **optimizer):
    return study_config(folder, workdir, seed=3, **{"prompt_model": None, "instructions": [], "budget_calls": BUDGET,
                                                    "num_candidates": 3, **optimizer})


@pytest.fixture(scope="module")
def runs(colour_folder, tmp_path_factory):
    """One optimize per method (run lazily, kept for the module): (outcome, task engine, writer)."""
    done = {}

    def run(method):
        if method not in done:
            cfg = method_config(colour_folder, tmp_path_factory.mktemp(method), method=method)
            engine, writer = ScriptedEngine(MethodVLM()), feedback_writer()
            outcome = optimize_task(cfg, lm=scripted_lm(engine, name=f"methods-{method}", cache=True),
                                    prompt_lm=writer.lm())
            done[method] = outcome, engine, writer
        return done[method]

    return run


@pytest.mark.parametrize("method", METHODS)
def test_each_method_chooses_its_best_candidate_on_val_and_its_artifact_replays(runs, method):
    outcome, _, _ = runs(method)
    assert outcome.method == method
    full = [row for row in outcome.history if row["scope"] == "full"]
    best = max(row["score"] for row in full)
    val = outcome.optimized["val"].metrics["accuracy"]
    assert val == pytest.approx(best, abs=1e-3)  # re-evaluated, it scores its best candidate's (MIPROv2 rounds)
    assert val > outcome.baseline["val"].metrics["accuracy"]
    frozen = load_artifact(outcome.artifact, expected_labels=["cat", "dog", "bird"])
    chosen = frozen.program.predictors()[0]
    assert any(row["score"] == best and row["instruction"] == chosen.signature.instructions
               and row["n_demos"] == len(chosen.demos) for row in full)
    replay = evaluate_program(frozen.program, [_example(r) for r in outcome.optimized["val"].records],
                              lm=scripted_lm(ScriptedEngine(MethodVLM()), name=f"replay-{method}"),
                              task=frozen.task, labels=frozen.labels, num_threads=2)
    assert replay.metrics["accuracy"] == frozen.artifact.metrics["val"]["accuracy"] == val
    trials = json.loads((outcome.run.path / "trials.json").read_text())
    assert trials["method"] == method and trials["trials"] == outcome.history


def _example(record):
    return dspy.Example(image=dspy.Image(record.thumbnail), label=record.gold, id=record.id).with_inputs("image")


@pytest.mark.parametrize("method", METHODS)
def test_the_budget_is_in_model_calls_and_the_calls_made_are_counted_at_the_lm_edge(runs, method):
    outcome, engine, writer = runs(method)
    calls = json.loads((outcome.run.path / "trials.json").read_text())["details"]["calls"]
    assert calls["budget_calls"] == BUDGET
    assert 0 < calls["asked_task"] <= BUDGET + 12  # 12 = one val evaluation past the last check
    assert 0 < calls["reached_task"] <= calls["asked_task"]  # a call asked twice (or by the baseline) replays
    assert calls["asked_writer"] == calls["reached_writer"] == len(writer.calls)
    assert calls["reached_task"] <= engine.stats.requests


def test_gepa_keeps_its_candidates_and_pareto_front_and_learns_from_the_feedback(runs):
    outcome, _, writer = runs("gepa")
    details = json.loads((outcome.run.path / "trials.json").read_text())["details"]
    front = [row["candidate"] for row in outcome.history if row["pareto"]]
    assert details["pareto_front"] == front and details["best_candidate"] in front
    assert outcome.history[0]["instruction"] == "Classify the animal." and outcome.history[0]["parents"] == []
    assert json.loads(outcome.artifact.read_text())["prompt"]["messages"][0]["content"] == GOOD
    shown = "\n".join(writer.texts())
    assert "Invalid output: the model wrote 'pug'" in shown  # an invalid answer with its raw text
    assert "This trajectory got a score" not in shown  # GEPA's bare-number fallback never stood in
    assert any(images for call in writer.calls for _, _, images in call.turns)  # the reflection saw the images


def test_simba_steps_are_recorded_and_its_rule_writer_reads_the_feedback(runs):
    outcome, _, writer = runs("simba")
    steps = [row for row in outcome.history if row["scope"] == "simba_step"]
    assert len(steps) >= 1 and all("step" in row for row in steps)
    assert GOOD in json.loads(outcome.artifact.read_text())["prompt"]["messages"][0]["content"]
    shown = "\n".join(writer.texts())
    assert "[[ ## worse_reward_info ## ]]" in shown  # the reward info SIMBA shows beside a trajectory ...
    assert '"feedback": "Invalid output: the model wrote' in shown or '"feedback": "Wrong: ' in shown  # ... is ours
    assert not any(images for call in writer.calls for _, _, images in call.turns)  # SIMBA masks images


def test_random_search_needs_no_writer_and_keeps_the_config_instruction(runs):
    outcome, _, writer = runs("random_search")
    assert writer.calls == []
    assert {row["instruction"] for row in outcome.history} == {"Classify the animal."}
    assert {row["candidate"] for row in outcome.history} >= {-3, -2, -1}  # zero-shot, labelled, bootstrapped


@pytest.mark.parametrize("method", ["simba", "gepa"])
def test_a_method_that_needs_a_writer_refuses_a_config_without_one_before_any_work(colour_folder, tmp_path, method):
    cfg = method_config(colour_folder, tmp_path, method=method, prompt_model="none")
    engine = ScriptedEngine(MethodVLM())
    with pytest.raises(ConfigError, match=f"optimizer.method '{method}' .* needs a prompt model"):
        optimize_task(cfg, lm=scripted_lm(engine))
    assert engine.stats.requests == 0 and not (tmp_path / "runs").exists()


def test_gepa_without_a_writer_proposes_the_users_instructions_in_turn(colour_folder, tmp_path):
    cfg = method_config(colour_folder, tmp_path, method="gepa", prompt_model="none", instructions=[VAGUE, GOOD])
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(MethodVLM()), name="gepa-offline", cache=True))
    proposed = {row["instruction"] for row in outcome.history}
    assert proposed <= {"Classify the animal.", VAGUE, GOOD} and GOOD in proposed
    assert outcome.optimized["val"].metrics["accuracy"] == 1.0
    assert any("proposes the 2 optimizer.instructions in turn" in note for note in outcome.notes)


def test_compare_runs_every_method_on_the_same_splits_and_the_winner_on_val_is_the_artifact(colour_folder, tmp_path):
    cfg = method_config(colour_folder, tmp_path, compare=["random_search", "gepa", "simba", "mipro"])
    writer = feedback_writer()
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(MethodVLM()), name="compare", cache=True),
                            prompt_lm=writer.lm())
    record = json.loads((outcome.run.path / "comparison.json").read_text())
    assert list(record["methods"]) == ["random_search", "gepa", "simba", "mipro"] == list(outcome.methods)
    val = {name: m["val"]["accuracy"] for name, m in record["methods"].items()}
    winner = record["winner"]
    assert winner == outcome.method and val[winner] == max(val.values())
    assert winner == next(name for name in record["methods"] if val[name] == max(val.values()))  # first among equals
    assert record["methods"]["random_search"]["val"]["accuracy"] < val[winner]
    test_ids = {r.id for r in outcome.optimized["test"].records}
    for run in outcome.methods.values():
        assert {r.id for r in run.test.records} == test_ids
    instruction = json.loads(outcome.artifact.read_text())["prompt"]["messages"][0]["content"]
    assert instruction == record["methods"][winner]["instruction"]
    assert record["methods"][winner]["test"] == {k: outcome.optimized["test"].metrics.get(k)
                                                 for k in record["methods"][winner]["test"]}

    from vlmopt.reports.method_table import method_table

    console = Console(width=250, record=True)
    console.print(method_table(outcome))
    text = console.export_text()
    assert f"{winner} * (n=12)" in text and "baseline (n=12)" in text
    assert all(name in text for name in record["methods"])
    row = next(line for line in text.splitlines() if "model calls asked" in line)
    assert [int(c) for c in row.split("│")[3:-1]] == [m["calls"]["asked"] for m in record["methods"].values()]


def test_compare_skips_the_methods_that_cannot_run_with_a_one_line_note(colour_folder, tmp_path):
    cfg = method_config(colour_folder, tmp_path, prompt_model="none", compare=["simba", "random_search"])
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(MethodVLM()), name="compare-offline", cache=True))
    assert list(outcome.methods) == ["random_search"]
    assert outcome.notes[0].startswith("skipped: optimizer.method 'simba' (dspy.SIMBA) needs a prompt model")


def test_the_outer_study_chooses_the_method_as_one_of_its_dimensions(colour_folder, tmp_path):
    cfg = method_config(colour_folder, tmp_path, method="random_search", search_methods=["gepa"], search_trials=3,
                        budget_calls=80)
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(MethodVLM()), name="study-methods", cache=True),
                            prompt_lm=feedback_writer().lm())
    search = json.loads((outcome.run.path / "search.json").read_text())
    tried = {t["params"]["method"] for t in search["trials"] if t["state"] == "complete"}
    assert tried <= {"random_search", "gepa"} and tried
    best = next(t for t in search["trials"] if t["number"] == search["best"])
    assert outcome.method == best["params"]["method"]
    for path in (outcome.run.path / "search").iterdir():
        history = json.loads(path.read_text())
        assert history["method"] == history["settings"]["method"] and history["method_trials"]
