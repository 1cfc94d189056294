"""What every search method is given, and what each one hands back — the same for all four.

A method (MIPROv2, GEPA, SIMBA, random search) sees the same program, the same demo pool (the
train split with demo images downscaled), the same val split it is selected on, the same metric
and the same writing model. It returns the program it chose on val, the candidates it scored
(the trial history, plain JSON rows) and what it noted. The test split is never part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import dspy

from vlmopt.config import OptimizerConfig, TaskConfig
from vlmopt.metrics.dspy_metrics import Metric
from vlmopt.optimizers.feedback import feedback_metric
from vlmopt.optimizers.prompt_model import PromptModel
from vlmopt.programs import Classify


@dataclass
class MethodTask:
    """One method's inputs: ``settings`` has the demo counts capped to what fits the model's context."""

    cfg: TaskConfig
    settings: OptimizerConfig
    program: Classify
    trainset: list[dspy.Example]
    valset: list[dspy.Example]
    lm: dspy.LM
    prompt: PromptModel
    metric: Metric
    labels: list[str] | None = None

    @property
    def num_threads(self) -> int:
        return self.cfg.run.num_threads

    def feedback_metric(self):
        """The task's metric with a feedback text beside the score (GEPA, SIMBA)."""
        fields = list(self.cfg.task.fields or {}) or None
        return feedback_metric(self.metric, self.cfg.task.output, self.labels, fields)


@dataclass
class MethodResult:
    """The program a method chose on val, its val score (0-1) and the candidates it scored.

    ``history`` rows share the keys ``scope`` ("full" for a full-val score), ``score`` (0-1),
    ``instruction`` and ``n_demos``; each method adds its own (GEPA's parents, SIMBA's step).
    ``details`` holds what only one method has (GEPA's Pareto front, the budget it was given).
    """

    program: dspy.Module
    val_score: float
    history: list[dict[str, Any]]
    instruction_candidates: list[str]
    notes: list[str] = field(default_factory=list)
    trainset: list[dspy.Example] = field(default_factory=list)  # what the demos were drawn from
    method: str = "mipro"
    details: dict[str, Any] = field(default_factory=dict)


def bare(chosen: dspy.Module, seed: Classify) -> Classify:
    """The chosen instruction and demos on a fresh copy of the seed program.

    Optimizers attach their bookkeeping to the program they return (every candidate program,
    GEPA's ``detailed_results``); the artifact and every later copy need none of it.
    """
    fresh = seed.deepcopy()
    (source,), (target,) = chosen.predictors(), fresh.predictors()
    target.signature, target.demos = source.signature, list(source.demos)
    return fresh


def instruction_of(program: dspy.Module) -> str:
    (predictor,) = program.predictors()
    return predictor.signature.instructions


def n_demos(program: dspy.Module) -> int:
    (predictor,) = program.predictors()
    return len(predictor.demos)


def val_score(program: dspy.Module, task: MethodTask) -> float:
    """``program``'s score (0-1) on the val split under the task's metric: how a method's candidates are chosen."""
    evaluate = dspy.Evaluate(
        devset=task.valset,
        metric=task.metric,
        num_threads=task.num_threads,
        display_progress=False,
        provide_traceback=False,
    )
    with dspy.context(lm=task.lm):
        return mean_score(evaluate(program).results)


def mean_score(results: list[tuple]) -> float:
    """The mean of Evaluate's per-example scores (its own ``score`` is a percentage rounded to 2 places)."""
    scores = [float(score) for *_, score in results]
    return sum(scores) / len(scores) if scores else 0.0
