"""The outer Optuna study: trials over program choices, the Pareto front, storage, resume, workers.

The task model is the scripted test double at the model edge (``study_task.StudyVLM``): its
accuracy and answer length depend on the searched choices, so the study has something real to
find. Everything else — dataset loading, DSPy's MIPROv2 inside each trial, Evaluate, Optuna, the
SQLite storage, heartbeats, worker processes and SIGKILL — is real.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from study_procs import assert_no_settings_twice, complete, finish, kill_mid_trial, start_worker, start_workers
from study_task import StudyVLM, centre, make_colour_folder, study_config
from vlmopt.config import ConfigError
from vlmopt.datasets import load_splits
from vlmopt.datasets.images import dspy_image_to_pil
from vlmopt.evaluate import evaluate_program
from vlmopt.optimizers.search_space import SearchSpace, apply_settings
from vlmopt.optimizers.study import run_search
from vlmopt.optimizers.study_slots import duplicate_of, take_slot
from vlmopt.optimizers.study_storage import StudyMismatch
from vlmopt.optimizers.trial_program import rebuild_trial
from vlmopt.pipeline import configure_cache
from vlmopt.reports.run_dir import RunDir
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm

FIELDS = ["method", "adapter", "reasoning", "structured_generation", "max_labeled_demos", "max_bootstrapped_demos",
          "max_image_side", "num_candidates", "num_trials"]

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_colour_folder(tmp_path_factory.mktemp("colours"))


def search(data: Path, workdir: Path, **kwargs):
    """run_search in this process over the scripted model; returns (cfg, result, the scripted model)."""
    cfg = study_config(data, workdir)
    configure_cache(cfg)
    vlm = StudyVLM()
    engine = ScriptedEngine(vlm)
    run = RunDir.create(cfg.run.output_dir, "search")
    result = run_search(cfg, run=run, lm_factory=lambda _cfg: scripted_lm(engine, name="study", cache=True), **kwargs)
    return cfg, result, vlm


# --- the search space -----------------------------------------------------------------------

def test_space_comes_from_the_config_and_settings_make_a_valid_config(data, tmp_path):
    cfg = study_config(data, tmp_path)
    space = SearchSpace.from_config(cfg)
    assert space.adapter == ("compact", "dspy") and space.reasoning == (False, True)
    assert space.max_labeled_demos == (0, 1, 2) and space.max_bootstrapped_demos == (0, 1)
    assert space.max_image_side == (16, 32) and space.num_candidates == (2, 3) and space.num_trials == (2, 4)
    assert space.size == 2 * 2 * 2 * 3 * 2 * 2 * 2 * 2

    settings = dict(adapter="dspy", reasoning=True, structured_generation=False, max_labeled_demos=0,
                    max_bootstrapped_demos=1, max_image_side=16, num_candidates=2, num_trials=4)
    trial_cfg = apply_settings(cfg, settings)
    task = trial_cfg.task
    assert (task.adapter, task.reasoning, task.structured_generation) == ("dspy", True, False)
    assert trial_cfg.dataset.max_image_side == 16
    opt = trial_cfg.optimizer
    budget = (opt.auto, opt.num_candidates, opt.num_trials, opt.max_labeled_demos, opt.max_bootstrapped_demos)
    assert budget == (None, 2, 4, 0, 1)
    assert cfg.task.adapter == "compact"  # the config itself is untouched
    with pytest.raises(ValueError, match="distinct choices"):
        SearchSpace(adapter=())


def test_search_arguments_are_checked_before_any_work(data, tmp_path):
    cfg = study_config(data, tmp_path)
    run = RunDir.create(tmp_path / "runs", "x")
    with pytest.raises(ConfigError, match="only 384 distinct settings"):
        run_search(cfg, run=run, n_trials=385)
    with pytest.raises(ConfigError, match="worker shares a study"):
        run_search(cfg, run=run, n_trials=2, worker=True)
    with pytest.raises(ConfigError, match="'accuracy' then any of"):
        run_search(cfg, run=run, n_trials=2, objectives=("tokens",))


# --- one process ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    return search(data, tmp_path_factory.mktemp("single"), n_trials=5)


def test_single_objective_study_runs_the_trials_and_keeps_what_rebuilds_them(single):
    cfg, result, _ = single
    trials = complete(result.study)
    assert len(trials) == 5 == len(result.trials)
    assert result.best.value == max(t.value for t in trials)
    run = result.summary_path.parent
    assert result.storage == f"sqlite:///{run.resolve() / 'study.db'}" and (run / "study.db").is_file()
    summary = json.loads(result.summary_path.read_text())
    assert summary["best"] == result.best.number and summary["directions"] == ["maximize"]
    assert sum(row["state"] == "complete" for row in summary["trials"]) == 5
    for trial in trials:
        assert list(trial.params) == FIELDS
        history = json.loads(Path(trial.user_attrs["history"]).read_text())
        assert history["settings"] == trial.params and history["method_trials"]
        assert trial.user_attrs["program"]["instruction"] in history["instruction_candidates"]
        assert trial.user_attrs["metrics"]["val_accuracy"] == trial.value


def test_every_trial_rebuilds_to_its_val_accuracy(single):
    cfg, result, _ = single
    engine = ScriptedEngine(StudyVLM())
    for trial in complete(result.study):
        winner = rebuild_trial(cfg, trial)
        assert winner.cfg.task.reasoning == trial.params["reasoning"]
        assert winner.cfg.dataset.max_image_side == trial.params["max_image_side"]
        assert len(winner.program.predictors()[0].demos) == len(trial.user_attrs["program"]["demos"])
        replay = evaluate_program(winner.program, winner.splits.val, lm=scripted_lm(engine, name="replay"),
                                  task=winner.cfg.task, labels=winner.splits.labels, num_threads=2)
        assert replay.metrics["accuracy"] == pytest.approx(trial.value), trial.number


def test_the_search_never_shows_the_model_a_test_image(single):
    cfg, _, vlm = single
    splits = load_splits(cfg)
    colours = {name: {centre(dspy_image_to_pil(ex.image)) for ex in getattr(splits, name)}
               for name in ("train", "val", "test")}
    seen = set(vlm.seen)
    assert colours["val"] <= seen
    assert not seen & colours["test"]
    assert seen <= colours["train"] | colours["val"]


# A grid of 8 (reasoning x image side x demos; compact, structured), searched whole: the front is known.
PARETO_SPACE = SearchSpace(adapter=("compact",), reasoning=(False, True), structured_generation=(True,),
                           max_labeled_demos=(0, 2), max_bootstrapped_demos=(0,), max_image_side=(16, 32),
                           num_candidates=(3,), num_trials=(4,))


@pytest.fixture(scope="module")
def pareto(data, tmp_path_factory):
    return search(data, tmp_path_factory.mktemp("pareto"), n_trials=8, objectives=("accuracy", "tokens"),
                  space=PARETO_SPACE)


def test_two_objective_study_reports_the_pareto_front(pareto):
    cfg, result, _ = pareto
    trials = complete(result.study)
    assert len(trials) == 8 == PARETO_SPACE.size
    assert_no_settings_twice(result.study)
    repeats = result.study.get_trials(states=(TrialState.PRUNED,))
    assert repeats  # a grid searched whole: the sampler proposes finished settings, which cost nothing
    for t in repeats:
        assert result.study.trials[t.user_attrs["duplicate_of"]].params == t.params
    for t in trials:
        metrics = t.user_attrs["metrics"]
        assert t.values == [metrics["val_accuracy"], metrics["tokens_per_image"]]
        assert metrics["latency_s_per_image"] > 0

    # Reasoning reads every colour (18 words); without it red and blue only (2 words); 16 px reads nothing.
    val = load_splits(cfg).val
    red_or_blue = sum(ex.label != "bird" for ex in val) / len(val)
    assert {tuple(t.values) for t in result.pareto} == {(1.0, 18.0), (red_or_blue, 2.0)}

    def dominates(a, b):
        return a.values[0] >= b.values[0] and a.values[1] <= b.values[1] and a.values != b.values

    front = {t.number for t in trials if not any(dominates(o, t) for o in trials)}
    assert {t.number for t in result.pareto} == front
    assert result.best.values == [1.0, 18.0]
    summary = json.loads(result.summary_path.read_text())
    assert sorted(summary["pareto"]) == sorted(front) and summary["directions"] == ["maximize", "minimize"]


def test_tokens_are_measured_from_the_models_answers(pareto):
    _, result, _ = pareto
    for t in complete(result.study):
        assert t.values[1] == (18.0 if t.params["reasoning"] else 2.0), t.params


def test_resume_keeps_finished_trials_and_refuses_another_task(data, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    _, first, _ = search(data, tmp_path / "a", n_trials=3, storage=storage, study_name="colours")
    before = {t.number: (t.params, t.value) for t in complete(first.study)}
    _, again, _ = search(data, tmp_path / "b", n_trials=5, storage=storage, study_name="colours")
    after = {t.number: (t.params, t.value) for t in complete(again.study)}
    assert len(after) == 5 and all(after[n] == kept for n, kept in before.items())
    assert_no_settings_twice(again.study)

    cfg = study_config(data, tmp_path / "c")
    cfg.task.system_prompt = "Name the animal."
    with pytest.raises(StudyMismatch, match="different task"):
        run_search(cfg, run=RunDir.create(tmp_path / "c", "x"), n_trials=5, storage=storage, study_name="colours")
    with pytest.raises(StudyMismatch, match="optimizes"):
        search(data, tmp_path / "d", n_trials=5, storage=storage, study_name="colours",
               objectives=("accuracy", "latency"))


# --- sharing rules, on Optuna's in-memory storage ------------------------------------------------

def _trial(study: optuna.Study, a: int) -> optuna.Trial:
    study.enqueue_trial({"a": a})
    trial = study.ask()
    trial.suggest_categorical("a", [1, 2, 3])
    return trial


def test_same_settings_as_a_finished_or_earlier_running_trial_is_a_duplicate():
    study = optuna.create_study()
    done = _trial(study, 1)
    study.tell(done, 0.5)
    assert duplicate_of(_trial(study, 1)) == done.number
    running = _trial(study, 2)
    later = _trial(study, 2)
    assert duplicate_of(later) == running.number
    assert duplicate_of(running) is None  # the later, undecided one does not go first
    assert duplicate_of(_trial(study, 3)) is None


def test_a_trial_waits_for_a_free_slot_and_is_surplus_once_the_study_is_full():
    study = optuna.create_study()
    study.tell(_trial(study, 1), 0.5)
    holder = _trial(study, 2)
    assert take_slot(holder, n_trials=2, poll_interval_s=0.01)
    waiter = _trial(study, 3)
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(take_slot(waiter, n_trials=2, poll_interval_s=0.01)))
    thread.start()
    thread.join(0.5)
    assert thread.is_alive() and not outcome  # 1 complete + 1 admitted fill both slots
    study.tell(holder, state=TrialState.FAIL)  # the slot frees
    thread.join(5)
    assert outcome == [True]
    study.tell(waiter, 0.7)
    assert take_slot(_trial(study, 1), n_trials=2, poll_interval_s=0.01) is False


# --- worker processes on one SQLite storage -------------------------------------------------------

@pytest.mark.slow
def test_a_worker_killed_mid_trial_resumes_with_its_finished_trials_kept(data, tmp_path):
    storage, name = f"sqlite:///{tmp_path / 'study.db'}", "killed"
    proc = start_worker(data, tmp_path, storage, name, 4, "--call-delay", "0.01")
    _, killed = kill_mid_trial([proc], name, storage, min_complete=2)
    study = optuna.load_study(study_name=name, storage=storage)
    kept = {t.number: (t.params, t.value) for t in complete(study)}
    assert study.trials[killed.number].state == TrialState.RUNNING  # its worker is gone

    resumed = finish(start_worker(data, tmp_path, storage, name, 4))
    study = optuna.load_study(study_name=name, storage=storage)
    after = {t.number: (t.params, t.value) for t in complete(study)}
    assert len(after) == 4 and all(after[n] == v for n, v in kept.items())
    assert set(resumed["complete"]) == set(after) - set(kept)
    assert study.trials[killed.number].state == TrialState.FAIL  # the heartbeat noticed; not RUNNING forever
    assert not study.get_trials(states=(TrialState.RUNNING,))
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert retries and retries[0].params == killed.params
    assert_no_settings_twice(study)


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_finish_n_trials_in_total(data, tmp_path):
    storage, name = f"sqlite:///{tmp_path / 'study.db'}", "shared"
    procs = start_workers(2, data, tmp_path, storage, name, 4, "--call-delay", "0.01")
    outs = [finish(p) for p in procs]
    study = optuna.load_study(study_name=name, storage=storage)
    numbers = {t.number for t in complete(study)}
    assert len(numbers) == 4
    mine = [set(o["complete"]) for o in outs]
    # Exactly N in total although each worker was asked for N: they shared one study. Which worker
    # ran how many is up to the scheduler (under load one may run them all), so it is not asserted.
    assert mine[0] | mine[1] == numbers and not mine[0] & mine[1]
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert_no_settings_twice(study)
    for trial in complete(study):
        assert Path(trial.user_attrs["history"]).is_file()
