"""The outer search: an Optuna study over program choices, each trial a method's search on train/val.

A method (MIPROv2 by default) tunes instructions and demos for one program; this study tunes the
program around it — framing (compact / dspy adapter), reasoning, structured decoding, how many
demos, the image side, MIPROv2's own budget and, with ``optimizer.search_methods``, the method
itself (see ``search_space``). A trial runs its method on train/val with its
settings and reports val accuracy, or (val accuracy, tokens or latency per image) with the Pareto
front in ``study.best_trials``. The test split is never touched here: the caller rebuilds the
winner (``rebuild_trial``) and scores it on test once.

The study lives in an RDB storage (``study_storage``): SQLite in the run directory by default,
PostgreSQL to share it between ``--worker`` processes, which together finish ``n_trials``
complete trials with no settings run twice (``study_slots``). A killed study resumes by opening
the same storage and study name. Each trial writes MIPROv2's own trial history to
``<run>/search/trial-NNNN.json``; ``<run>/search.json`` summarises the study as this worker last
saw it.

The caller configures DSPy's cache first (``pipeline.configure_cache``), as for any optimize run.

Example::

    result = run_search(cfg, run=run, n_trials=12, objectives=("accuracy", "tokens"))
    [t.values for t in result.pareto], result.best.params
    winner = rebuild_trial(cfg, result.best)    # then score winner.program on winner.splits.test
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dspy
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console

from vlmopt.config import ConfigError, TaskConfig
from vlmopt.datasets import LoadedSplits, load_splits
from vlmopt.evaluate import evaluate_program
from vlmopt.optimizers.methods import run_method
from vlmopt.optimizers.prompt_model import PromptModel
from vlmopt.optimizers.search_space import SearchSpace, apply_settings
from vlmopt.optimizers.study_slots import duplicate_of, take_slot
from vlmopt.optimizers.study_storage import (
    Heartbeat,
    default_storage_url,
    display_url,
    open_storage,
    open_study,
    study_fingerprint,
)
from vlmopt.optimizers.trial_program import PROGRAM_ATTR, program_record
from vlmopt.reports.run_dir import RunDir
from vlmopt.serving.factory import create_lm, with_structured_generation

logger = logging.getLogger(__name__)

# objective -> (direction, the trial metric it reads)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "accuracy": ("maximize", "val_accuracy"),
    "tokens": ("minimize", "tokens_per_image"),
    "latency": ("minimize", "latency_s_per_image"),
}
# A sampler that keeps proposing finished settings has (nearly) exhausted the grid.
MAX_DUPLICATES_IN_A_ROW = 200

LmFactory = Callable[[TaskConfig], dspy.LM]


@dataclass
class SearchResult:
    """The study after this worker's part: complete trials, the Pareto front and the winner."""

    study: optuna.Study
    study_name: str
    storage: str  # password masked
    objectives: tuple[str, ...]
    trials: list[FrozenTrial]  # complete ones
    pareto: list[FrozenTrial]  # study.best_trials
    best: FrozenTrial  # highest val accuracy on the front, then lowest cost, then earliest
    summary_path: Path
    notes: list[str] = field(default_factory=list)
    splits_by_side: dict[int, LoadedSplits] = field(default_factory=dict)  # as loaded for the trials

    def best_splits(self) -> LoadedSplits | None:
        """The splits at the winner's image side, if this worker loaded them (the winner's rebuild reuses them)."""
        return self.splits_by_side.get(self.best.params.get("max_image_side"))


def shared_lm_factory(create: LmFactory = create_lm) -> LmFactory:
    """An LM per distinct model/backend, built once — not a model load per trial.

    Structured decoding is a setting the in-process engine states to DSPy, so the search holds at
    most two LMs (constrained and free) over one loaded model (``with_structured_generation``);
    every other searched choice is a prompt choice.
    """
    loaded: dict[str, dspy.LM] = {}
    built: dict[tuple[str, bool], dspy.LM] = {}

    def factory(cfg: TaskConfig) -> dspy.LM:
        key = json.dumps([cfg.model.model_dump(), cfg.backend.model_dump()], default=str)
        structured = cfg.task.structured_generation
        if key not in loaded:
            loaded[key] = create(cfg)
        if (key, structured) not in built:
            built[key, structured] = with_structured_generation(loaded[key], structured)
        return built[key, structured]

    return factory


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Accuracy first, then any of tokens / latency (per image, on val)."""
    objectives = tuple(objectives)
    costs = [o for o in OBJECTIVES if o != "accuracy"]
    if (
        not objectives
        or objectives[0] != "accuracy"
        or len(set(objectives)) != len(objectives)
        or any(o not in costs for o in objectives[1:])
    ):
        raise ConfigError(f"search objectives must be 'accuracy' then any of {costs} (got {list(objectives)})")
    return objectives


def pick_best(front: Sequence[FrozenTrial]) -> FrozenTrial:
    """The winner on a front whose first value is accuracy: most accurate, then cheapest, then earliest."""
    return max(front, key=lambda t: (t.values[0], *(-v for v in t.values[1:]), -t.number))


def run_search(
    cfg: TaskConfig,
    *,
    run: RunDir,
    n_trials: int | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    lm_factory: LmFactory | None = None,
    prompt_lm: dspy.LM | None = None,
    splits: LoadedSplits | None = None,
    worker: bool = False,
    console: Console | None = None,
    objectives: Sequence[str] = ("accuracy",),
    space: SearchSpace | None = None,
    heartbeat: Heartbeat = Heartbeat(),
    prompt: PromptModel | None = None,
) -> SearchResult:
    """Run (or join, or resume) the outer study until ``n_trials`` trials are complete in total.

    ``n_trials`` defaults to ``optimizer.search_trials``, ``storage`` to ``optimizer.storage``, else
    SQLite in ``run``; ``study_name`` to ``<cfg.name>-search``. A ``worker`` shares a study that
    other processes run too: it needs an explicit storage, and its sampler is seeded from the OS
    (workers with one seed would propose the same settings). A lone study's sampler is seeded from
    ``cfg.seed`` and the number of trials already in the study, so a fresh run is reproducible and
    a resumed one does not replay the settings it already tried. ``splits`` (at the config's image
    side) saves loading the data set again when the caller has it; ``prompt_lm`` replaces the
    config's ``optimizer.prompt_model`` (``prompt``, already resolved, replaces both).
    """
    objectives = check_objectives(objectives)
    n_trials = n_trials if n_trials is not None else cfg.optimizer.search_trials
    space = space or SearchSpace.from_config(cfg)
    if n_trials < 1:
        raise ConfigError("the search needs at least one trial (optimizer.search_trials)")
    if n_trials > space.size:
        raise ConfigError(f"{n_trials} search trials, but the search space holds only {space.size} distinct settings")
    url = storage or cfg.optimizer.storage
    if url is None:
        if worker:
            raise ConfigError("a --worker shares a study: give the storage URL (--storage or optimizer.storage)")
        url = default_storage_url(run.path)
    study_name = study_name or f"{cfg.name or 'run'}-search"

    base = splits or load_splits(cfg)
    directions = [OBJECTIVES[o][0] for o in objectives]
    fingerprint = study_fingerprint(cfg, base.fingerprint, space.to_json(), list(objectives))
    study = open_study(open_storage(url, heartbeat), study_name, directions=directions, fingerprint=fingerprint)
    study.sampler = optuna.samplers.TPESampler(seed=None if worker else cfg.seed + len(study.trials))
    runner = _TrialRunner(cfg, space, base, n_trials, objectives, lm_factory or shared_lm_factory(),
                          prompt or PromptModel.resolve(cfg, prompt_lm), run, heartbeat, console)
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < n_trials:
        study.optimize(runner, callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE,))])
    notes = []
    if runner.exhausted:
        notes.append(f"stopped: the sampler proposed only finished settings {MAX_DUPLICATES_IN_A_ROW} times in a row "
                     f"(search space of {space.size})")
    result = _result(study, study_name, url, objectives, run, notes)
    result.splits_by_side = runner.splits
    return result


class _TrialRunner:
    """The objective: settings -> (duplicate? slot?) -> the method on train/val -> values, attrs, history file."""

    def __init__(self, cfg: TaskConfig, space: SearchSpace, base: LoadedSplits, n_trials: int,
                 objectives: tuple[str, ...], lm_factory: LmFactory, prompt: PromptModel, run: RunDir,
                 heartbeat: Heartbeat, console: Console | None):
        self.cfg, self.space, self.n_trials, self.objectives = cfg, space, n_trials, objectives
        self.lm_factory, self.prompt, self.run, self.heartbeat, self.console = (
            lm_factory, prompt, run, heartbeat, console)
        self.splits: dict[int, LoadedSplits] = {cfg.dataset.max_image_side: base}
        self.fingerprint = base.fingerprint
        self.duplicates_in_a_row = 0
        self.exhausted = False

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        settings = self.space.suggest(trial)
        same = duplicate_of(trial)
        if same is not None:
            trial.set_user_attr("duplicate_of", same)
            self.duplicates_in_a_row += 1
            if self.duplicates_in_a_row >= MAX_DUPLICATES_IN_A_ROW:
                self.exhausted = True
                trial.study.stop()
            raise optuna.TrialPruned(f"same settings as trial {same}")
        self.duplicates_in_a_row = 0
        if not take_slot(trial, self.n_trials, self.heartbeat.poll_interval_s):
            trial.set_user_attr("surplus", True)
            raise optuna.TrialPruned(f"{self.n_trials} trials are already complete")
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        trial_cfg = apply_settings(self.cfg, settings)
        splits = self._splits_for(trial_cfg)
        lm = self.lm_factory(trial_cfg)
        result = run_method(trial_cfg, splits, lm, self.prompt)
        metrics = {"val_accuracy": result.val_score, "n_val": len(splits.val), "n_train": len(splits.train)}
        if len(self.objectives) > 1:
            metrics.update(self._cost_on_val(trial.number, result.program, trial_cfg, splits, lm))
        record = program_record(result.program, result.trainset)
        history = self._write_history(trial.number, settings, metrics, record, result)
        trial.set_user_attr(PROGRAM_ATTR, record)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("notes", result.notes)
        trial.set_user_attr("history", str(history))
        values = tuple(float(metrics[OBJECTIVES[o][1]]) for o in self.objectives)
        self._say(trial.number, settings, metrics)
        return values[0] if len(values) == 1 else values

    def _splits_for(self, trial_cfg: TaskConfig) -> LoadedSplits:
        """The splits at the trial's image side, loaded once per side; the split itself never changes."""
        side = trial_cfg.dataset.max_image_side
        if side not in self.splits:
            splits = load_splits(trial_cfg)
            if splits.fingerprint != self.fingerprint:
                raise RuntimeError(f"the split changed with dataset.max_image_side={side}; it must not")
            self.splits[side] = splits
        return self.splits[side]

    def _cost_on_val(self, number: int, program: dspy.Module, trial_cfg: TaskConfig, splits: LoadedSplits,
                     lm: dspy.LM) -> dict[str, float]:
        """Tokens and latency per val image, measured: cached answers carry neither, so the cache is off."""
        outcome = evaluate_program(
            program, splits.val, lm=lm.copy(cache=False), task=trial_cfg.task, labels=splits.labels,
            num_threads=self.cfg.run.num_threads, seed=self.cfg.seed, console=self.console,
            description=f"search trial {number}: cost on val",
        )
        tokens, latency = outcome.metrics["tokens"], outcome.metrics["latency"]
        if "tokens" in self.objectives and (tokens["prompt_mean"] is None or tokens["completion_mean"] is None):
            raise ConfigError("the 'tokens' objective needs token usage, which this backend does not report")
        cost = {"latency_s_per_image": latency["mean_s"], "measured_val_accuracy": outcome.metrics["accuracy"]}
        if tokens["prompt_mean"] is not None and tokens["completion_mean"] is not None:
            cost["tokens_per_image"] = tokens["prompt_mean"] + tokens["completion_mean"]
        return cost

    def _write_history(self, number: int, settings: dict[str, Any], metrics: dict[str, Any],
                       record: dict[str, Any], result) -> Path:
        folder = self.run.path / "search"
        folder.mkdir(exist_ok=True)
        path = folder / f"trial-{number:04d}.json"
        path.write_text(json.dumps({
            "trial": number, "settings": settings, "metrics": metrics, "program": record,
            "instruction_candidates": result.instruction_candidates, "method": result.method,
            "method_trials": result.history, "details": result.details,
            "notes": result.notes,
        }, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    def _say(self, number: int, settings: dict[str, Any], metrics: dict[str, Any]) -> None:
        line = (
            f"search trial {number}: {settings['method']}, {settings['adapter']}, "
            f"reasoning {'on' if settings['reasoning'] else 'off'}, "
            f"structured {'on' if settings['structured_generation'] else 'off'}, "
            f"demos {settings['max_labeled_demos']}+{settings['max_bootstrapped_demos']}, "
            f"side {settings['max_image_side']}, budget {settings['num_candidates']}x{settings['num_trials']}"
            f" -> val accuracy {metrics['val_accuracy']:.3f}"
        )
        if "tokens_per_image" in metrics:
            line += f", {metrics['tokens_per_image']:.0f} tokens/img"
        if "latency_s_per_image" in metrics:
            line += f", {metrics['latency_s_per_image']:.3f} s/img"
        logger.info(line)
        if self.console is not None:
            self.console.print(line, highlight=False)


def _result(study: optuna.Study, study_name: str, url: str, objectives: tuple[str, ...], run: RunDir,
            notes: list[str]) -> SearchResult:
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study '{study_name}' has no complete trial")
    pareto = study.best_trials
    best = pick_best(pareto)
    summary = {
        "study": study_name,
        "storage": display_url(url),
        "objectives": list(objectives),
        "directions": [OBJECTIVES[o][0] for o in objectives],
        "best": best.number,
        "pareto": [t.number for t in pareto],
        "notes": notes,
        "trials": [_trial_row(t) for t in study.get_trials()],
    }
    path = run.write_json("search.json", summary)
    return SearchResult(study, study_name, display_url(url), objectives, complete, pareto, best, path, notes)


def _trial_row(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "params": trial.params,
        "values": trial.values,
        "user_attrs": trial.user_attrs,
        "started": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "finished": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }
