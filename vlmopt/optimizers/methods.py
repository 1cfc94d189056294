"""``optimizer.method``: the four search methods behind one entry point, ``run_method``.

Every plain optimize run, every ``--compare`` entry and every outer-study trial takes this path,
so a trial is exactly a plain run under the trial's settings:

1. the program the config describes, over the train split with demo images downscaled;
2. the demo counts capped to what fits the model's context (``context_budget``), with a note;
3. the writing model (``optimizer.prompt_model``) and what it sees, stated in the notes;
4. the method — DSPy's ``MIPROv2``, ``GEPA``, ``SIMBA`` or ``BootstrapFewShotWithRandomSearch`` —
   on train/val with the task's metric (GEPA and SIMBA with its feedback text), under
   ``optimizer.budget_calls``; the calls it asked for and the calls that reached a model are
   counted at the LM edge (``call_count``) and recorded.

A method that needs a writing model refuses a config without one before any work
(:func:`cannot_run`): SIMBA always, GEPA unless ``optimizer.instructions`` gives it candidates.

Example::

    result = run_method(cfg, splits, lm)
    result.program, result.val_score, result.details["calls"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import dspy

from vlmopt.config import ConfigError, OptimizerConfig, TaskConfig
from vlmopt.datasets import LoadedSplits
from vlmopt.metrics import metric_for
from vlmopt.optimizers.call_count import counting_calls
from vlmopt.optimizers.context_budget import max_demos_that_fit
from vlmopt.optimizers.gepa_task import run_gepa
from vlmopt.optimizers.method_task import MethodResult, MethodTask
from vlmopt.optimizers.mipro import run_mipro
from vlmopt.optimizers.prompt_model import NO_PROMPT_MODEL, PromptModel
from vlmopt.optimizers.random_search_task import run_random_search
from vlmopt.optimizers.simba_task import run_simba
from vlmopt.optimizers.trial_program import demo_trainset
from vlmopt.programs import Classify, create_program


def _mipro(task: MethodTask) -> MethodResult:
    return run_mipro(
        task.program,
        task.trainset,
        task.valset,
        task_lm=task.lm,
        metric=task.metric,
        settings=task.settings,
        seed=task.cfg.seed,
        num_threads=task.num_threads,
        prompt_lm=task.prompt.lm,
        prompt_model_sees_images=task.prompt.sees_images,
    )


@dataclass(frozen=True)
class Method:
    """A search method: the DSPy optimizer it runs and whether it can run without a writing model."""

    name: str
    optimizer: str
    run: Callable[[MethodTask], MethodResult]
    writes: str  # what it writes with the prompt model, for the refusal message
    offline: Callable[[OptimizerConfig], bool]  # can it run with prompt_model: none?


METHODS: dict[str, Method] = {
    "mipro": Method("mipro", "dspy.MIPROv2", _mipro, "instruction proposals", lambda s: True),
    "gepa": Method("gepa", "dspy.GEPA", run_gepa, "reflective rewrites", lambda s: bool(s.instructions)),
    "simba": Method("simba", "dspy.SIMBA", run_simba, "rules", lambda s: False),
    "random_search": Method(
        "random_search", "dspy.BootstrapFewShotWithRandomSearch", run_random_search, "nothing", lambda s: True
    ),
}


def cannot_run(name: str, settings: OptimizerConfig) -> str | None:
    """Why ``name`` cannot run under ``settings`` (one line), or None when it can."""
    method = METHODS[name]
    if settings.prompt_model != NO_PROMPT_MODEL or method.offline(settings):
        return None
    fix = " or give optimizer.instructions to propose in turn" if name == "gepa" else ""
    return (
        f"optimizer.method '{name}' ({method.optimizer}) needs a prompt model for its {method.writes}, and "
        f"optimizer.prompt_model is 'none': set it (a LiteLLM id, an OpenAI-compatible URL or a local "
        f"model dir){fix}; random_search and mipro run without one"
    )


def methods_to_run(cfg: TaskConfig) -> tuple[list[str], list[str]]:
    """(the methods this optimize runs, a note per method skipped), checked before any work.

    ``optimizer.compare`` naming search methods runs each of them (those that cannot run are skipped
    with a note; none left is an error); otherwise ``optimizer.method`` alone, refused with a
    :class:`~vlmopt.config.ConfigError` when it cannot run.
    """
    settings = cfg.optimizer
    wanted = [m for m in settings.compare if m in METHODS] or [settings.method]
    reasons = {m: cannot_run(m, settings) for m in wanted}
    runnable = [m for m in wanted if reasons[m] is None]
    if not runnable:
        raise ConfigError(
            reasons[wanted[0]]
            if len(wanted) == 1
            else f"none of {wanted} can run: " + "; ".join(r for r in reasons.values() if r)
        )
    return runnable, [f"skipped: {reasons[m]}" for m in wanted if reasons[m] is not None]


def prepare_task(
    cfg: TaskConfig, splits: LoadedSplits, lm: dspy.LM, prompt: PromptModel
) -> tuple[MethodTask, list[str]]:
    """The inputs every method shares, and the notes on how they were fitted."""
    program = create_program(cfg.task, splits.labels)
    trainset = demo_trainset(splits.train, cfg.optimizer.demo_max_image_side)
    settings, notes = fit_demos(cfg, program, trainset, lm)
    metric = metric_for(cfg.task.output, fields=list(cfg.task.fields or {}) or None)
    task = MethodTask(cfg, settings, program, trainset, splits.val, lm, prompt, metric, labels=splits.labels)
    return task, notes


def run_method(
    cfg: TaskConfig, splits: LoadedSplits, lm: dspy.LM, prompt: PromptModel | None = None, method: str | None = None
) -> MethodResult:
    """``method`` (default ``optimizer.method``) on train/val under ``cfg``'s settings; val is what it maximises."""
    name = method or cfg.optimizer.method
    if (reason := cannot_run(name, cfg.optimizer)) is not None:
        raise ConfigError(reason)
    prompt = prompt or PromptModel.resolve(cfg)
    task, notes = prepare_task(cfg, splits, lm, prompt)
    with counting_calls(lm, prompt.lm) as calls:
        result = METHODS[name].run(task)
    result.method = name
    result.details["calls"] = calls.summary(cfg.optimizer.budget_calls)
    result.notes[:0] = [*notes, prompt.statement()]
    return result


def fit_demos(
    cfg: TaskConfig, program: Classify, trainset: list[dspy.Example], lm: dspy.LM
) -> tuple[OptimizerConfig, list[str]]:
    """The optimizer settings with demos capped to what fits the model's context (and why)."""
    settings = cfg.optimizer
    wanted = max(settings.max_labeled_demos, settings.max_bootstrapped_demos)
    fits, note = max_demos_that_fit(program, trainset, lm, wanted, cfg.model.max_new_tokens)
    if fits >= wanted:
        return settings, []
    capped = settings.model_copy(
        update={
            "max_labeled_demos": min(settings.max_labeled_demos, fits),
            "max_bootstrapped_demos": min(settings.max_bootstrapped_demos, fits),
        }
    )
    return capped, [note]
