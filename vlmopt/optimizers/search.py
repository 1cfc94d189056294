"""The one search entry point: a task config's optimizer section -> the winning program.

``optimizer.search_trials`` unset runs ``optimizer.method`` once under the config's settings (or,
with search methods in ``optimizer.compare``, each of them, the best on val winning:
:mod:`vlmopt.optimizers.compare_methods`); set, it runs the outer Optuna study
(:mod:`vlmopt.optimizers.study`), each trial the same path
(:func:`~vlmopt.optimizers.methods.run_method`) under its own settings, and rebuilds the winning
trial. Either way the search sees only train and val; the caller scores the winner on test.

Example::

    winner = search_program(cfg, splits, lm, run=run)
    winner.program, winner.cfg.task.adapter, winner.notes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dspy
from rich.console import Console

from vlmopt.config import TaskConfig
from vlmopt.datasets import LoadedSplits
from vlmopt.optimizers.methods import run_method
from vlmopt.optimizers.prompt_model import PromptModel
from vlmopt.optimizers.reanchor import Calibration
from vlmopt.optimizers.study import LmFactory, run_search, shared_lm_factory
from vlmopt.optimizers.trial_program import rebuild_trial
from vlmopt.reports.run_dir import RunDir
from vlmopt.serving.factory import create_lm, job_owned


@dataclass
class Winner:
    """The searched program and the settings it runs under (the outer search may change them)."""

    cfg: TaskConfig
    splits: LoadedSplits
    program: dspy.Module
    lm: dspy.LM
    history: list[dict[str, Any]]
    instruction_candidates: list[str]
    notes: list[str]
    calibration: Calibration | None = None
    method: str = "mipro"
    details: dict[str, Any] = field(default_factory=dict)  # the method's own (GEPA's Pareto front, calls ...)


def search_program(cfg: TaskConfig, splits: LoadedSplits, lm: dspy.LM, *, run: RunDir,
                   prompt_lm: dspy.LM | None = None, lm_factory: LmFactory | None = None,
                   console: Console | None = None, prompt: PromptModel | None = None,
                   study_name: str | None = None) -> Winner:
    """The config's method on train/val, or the outer study when ``optimizer.search_trials`` is set."""
    if not cfg.optimizer.search_trials:
        result = run_method(cfg, splits, lm, prompt or PromptModel.resolve(cfg, prompt_lm))
        return Winner(cfg, splits, result.program, lm, result.history, result.instruction_candidates, result.notes,
                      method=result.method, details=result.details)
    factory = lm_factory or shared_lm_factory(lambda c: lm if same_engine(c, cfg) else job_owned(create_lm(c)))
    search = run_search(cfg, run=run, lm_factory=factory, prompt_lm=prompt_lm, splits=splits, console=console,
                        objectives=cfg.optimizer.search_objectives, prompt=prompt, study_name=study_name)
    best = rebuild_trial(cfg, search.best, search.best_splits())
    history = [{"trial": t.number, "score": t.values[0], "params": t.params} for t in search.trials]
    notes = [*search.notes, f"outer search: {len(search.trials)} trials in {search.storage} ({search.study_name}); "
             f"winner trial {search.best.number} with {search.best.params}"]
    return Winner(best.cfg, best.splits, best.program, factory(best.cfg), history,
                  [best.program.signature.instructions], notes, method=best.cfg.optimizer.method)


def same_engine(a: TaskConfig, b: TaskConfig) -> bool:
    """Two configs whose weights one loaded engine holds (structured generation is switched on it)."""
    return (a.model, a.backend) == (b.model, b.backend)
