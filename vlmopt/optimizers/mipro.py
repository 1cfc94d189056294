"""MIPROv2 for image classifiers: DSPy's optimizer with the few things a small VLM needs.

DSPy's MIPROv2 bootstraps few-shot demo sets from the train split, asks a prompt model for
candidate instructions, and runs an Optuna TPE study over (instruction, demo set) against the
val split. This subclass keeps that loop and adds:

* **the user's candidate instructions** (``optimizer.instructions``) join the proposals — or are
  the only candidates when no prompt model is used (``prompt_model: none``), which makes the
  search run fully offline;
* **a proposer that cannot write is not fatal**: a small VLM used as prompt model may produce
  unparseable text; the run notes it and searches the instructions it has;
* **the trial history** as plain JSON rows (each candidate's instruction, demo set and score).

Zero demos stays a candidate (DSPy's demo-set candidates always include the empty set), so the
search can tell when demos hurt a small VLM.

Example::

    result = run_mipro(program, train, val, task_lm=lm, settings=cfg.optimizer, metric=metric, seed=0)
    result.program, result.history[0]
"""

from __future__ import annotations

import logging
from typing import Any

import dspy

from vlmopt._dspy_compat import mipro_best_score, mipro_trials
from vlmopt.config import OptimizerConfig
from vlmopt.optimizers import budget
from vlmopt.optimizers.method_task import MethodResult
from vlmopt.optimizers.prompt_model import NO_PROMPT_MODEL

logger = logging.getLogger(__name__)


class ImageMIPROv2(dspy.MIPROv2):
    """MIPROv2 that also searches user-supplied instructions and survives a weak prompt model.

    ``_propose_instructions`` is a private DSPy hook, checked at import by
    ``vlmopt._dspy_compat.OPTIMIZER_HOOKS``.
    """

    def __init__(self, *args, extra_instructions: list[str] = (), use_proposer: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_instructions = list(extra_instructions)
        self.use_proposer = use_proposer
        self.notes: list[str] = []
        self.instruction_candidates: list[str] = []

    def _propose_instructions(self, program, trainset, demo_candidates, *args, **kwargs) -> dict[int, list[str]]:
        base = {i: [p.signature.instructions] for i, p in enumerate(program.predictors())}
        candidates = base
        if self.use_proposer:
            try:
                candidates = super()._propose_instructions(program, trainset, demo_candidates, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the search goes on with the instructions it has
                self.notes.append(
                    f"the prompt model could not propose instructions ({type(exc).__name__}: {exc}); "
                    "searched the config's prompt and optimizer.instructions only"
                )
        proposed = [t for t in _unique(candidates[0]) if t != base[0][0].strip()]
        if self.use_proposer and not proposed and not self.notes:
            self.notes.append("the prompt model proposed no usable instruction; searched the config's prompt "
                              "and optimizer.instructions only (set optimizer.prompt_model to a stronger model)")
        candidates = {i: _unique([*texts, *self.extra_instructions]) for i, texts in candidates.items()}
        self.instruction_candidates = candidates[0]
        return candidates


def _unique(texts: list[str]) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def mipro_budget(settings: OptimizerConfig, n_val: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(constructor kwargs, compile kwargs) for MIPROv2 from the optimizer section.

    ``auto`` picks DSPy's preset budget; explicit ``num_candidates`` / ``num_trials`` replace it
    (MIPROv2 refuses both at once); ``budget_calls`` sets the trials (``budget.mipro_trials``).
    """
    if settings.budget_calls is not None and n_val is not None:
        n = settings.num_candidates or 4
        minibatched = settings.minibatch and n_val > settings.minibatch_size
        per_trial = settings.minibatch_size if minibatched else n_val
        knob = budget.mipro_trials(settings.budget_calls, n_val, per_trial)
        return {"auto": None, "num_candidates": n}, {"num_trials": knob.value}
    explicit = settings.num_candidates is not None or settings.num_trials is not None
    if explicit:
        n = settings.num_candidates or 4
        return {"auto": None, "num_candidates": n}, {"num_trials": settings.num_trials or max(2, n)}
    return {"auto": settings.auto}, {}


def run_mipro(
    program: dspy.Module,
    trainset: list[dspy.Example],
    valset: list[dspy.Example],
    *,
    task_lm: dspy.LM,
    metric,
    settings: OptimizerConfig,
    seed: int,
    num_threads: int,
    prompt_lm: dspy.LM | None = None,
    prompt_model_sees_images: bool = True,
) -> MethodResult:
    """Search instructions x demo sets on val; return the best program and the trial history."""
    init_kwargs, compile_kwargs = mipro_budget(settings, len(valset))
    use_proposer = settings.prompt_model != NO_PROMPT_MODEL
    optimizer = ImageMIPROv2(
        metric=metric,
        task_model=task_lm,
        prompt_model=prompt_lm or task_lm,
        max_bootstrapped_demos=settings.max_bootstrapped_demos,
        max_labeled_demos=settings.max_labeled_demos,
        num_threads=num_threads,
        seed=seed,
        verbose=False,
        extra_instructions=settings.instructions,
        use_proposer=use_proposer,
        **init_kwargs,
    )
    if use_proposer and not prompt_model_sees_images:
        optimizer.notes.append("the prompt model does not take images: proposing without demo images")
    minibatch = settings.minibatch and len(valset) > settings.minibatch_size
    best = optimizer.compile(
        program,
        trainset=trainset,
        valset=valset,
        seed=seed,
        minibatch=minibatch,
        minibatch_size=min(settings.minibatch_size, len(valset)),
        program_aware_proposer=use_proposer,
        data_aware_proposer=use_proposer,
        tip_aware_proposer=use_proposer,
        fewshot_aware_proposer=use_proposer and prompt_model_sees_images,
        **compile_kwargs,
    )
    return MethodResult(
        program=best,
        val_score=mipro_best_score(best),
        history=trial_history(best),
        instruction_candidates=optimizer.instruction_candidates,
        notes=optimizer.notes,
        trainset=trainset,
        method="mipro",
    )


def trial_history(program: dspy.Module) -> list[dict[str, Any]]:
    """MIPROv2's trial logs as JSON rows: trial, scope (minibatch/full), score (0-1), instruction, demos."""
    rows = []
    for trial in mipro_trials(program):
        predictor = trial.program.predictors()[0]
        rows.append(
            {
                "trial": trial.trial,
                "scope": trial.scope,
                "score": trial.score,
                "instruction": predictor.signature.instructions,
                "instruction_index": trial.instruction_index,
                "demo_set_index": trial.demo_set_index,
                "n_demos": len(predictor.demos),
            }
        )
    return rows


def compile_comparison(
    name: str, program: dspy.Module, trainset: list[dspy.Example], *, metric, settings: OptimizerConfig, lm: dspy.LM
) -> dspy.Module:
    """A simpler DSPy optimizer's program, reported beside MIPROv2's (``optimizer.compare``)."""
    if name == "labeled_fewshot":
        optimizer = dspy.LabeledFewShot(k=settings.max_labeled_demos)
    elif name == "bootstrap_fewshot":
        optimizer = dspy.BootstrapFewShot(
            metric=metric,
            max_bootstrapped_demos=settings.max_bootstrapped_demos,
            max_labeled_demos=settings.max_labeled_demos,
        )
    else:
        raise ValueError(f"unknown comparison optimizer {name!r}; valid: labeled_fewshot, bootstrap_fewshot")
    with dspy.context(lm=lm):
        return optimizer.compile(program.deepcopy(), trainset=trainset)


def demo_effect(history: list[dict[str, Any]]) -> dict[int, float]:
    """Best full-val score per number of demos: does few-shot help this model at all?"""
    best: dict[int, float] = {}
    for row in history:
        if row.get("scope") == "full" and "n_demos" in row:
            best[row["n_demos"]] = max(best.get(row["n_demos"], 0.0), row["score"])
    return dict(sorted(best.items()))
