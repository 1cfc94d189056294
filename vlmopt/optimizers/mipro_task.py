"""MIPROv2 on a task config: the one path the plain search and every outer-study trial take.

Both searches run the same steps, so a trial of the outer study is exactly a plain optimize run
under the trial's settings:

1. the program the config describes, over the train split with demo images downscaled;
2. the demo counts capped to what fits the model's context (``context_budget``), with a note;
3. the prompt model (``optimizer.prompt_model``) and whether it sees the demo images;
4. :func:`~vlmopt.optimizers.mipro.run_mipro` on train/val with the task's metric.

Example::

    result = mipro_on_task(cfg, splits, lm)
    result.program, result.val_score, result.notes
"""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from vlmopt.config import OptimizerConfig, TaskConfig
from vlmopt.datasets import LoadedSplits
from vlmopt.metrics import metric_for
from vlmopt.optimizers.context_budget import max_demos_that_fit
from vlmopt.optimizers.mipro import MiproResult, run_mipro
from vlmopt.optimizers.trial_program import demo_trainset
from vlmopt.programs import Classify, create_program
from vlmopt.serving.factory import create_prompt_lm, job_owned


@dataclass(frozen=True)
class PromptModel:
    """MIPROv2's instruction proposer, resolved once per optimize (a prompt VLM loads once, not per trial).

    ``lm`` None means the task model proposes (``optimizer.prompt_model`` unset) or, with
    ``prompt_model: none``, nobody does.
    """

    lm: dspy.LM | None
    sees_images: bool

    @classmethod
    def resolve(cls, cfg: TaskConfig, given: dspy.LM | None = None) -> PromptModel:
        """The prompt model a caller passed (assumed to see images), else the config's (built for the job)."""
        if given is not None:
            return cls(given, True)
        lm, sees_images = create_prompt_lm(cfg)
        return cls(job_owned(lm) if lm is not None else None, sees_images)


def mipro_on_task(cfg: TaskConfig, splits: LoadedSplits, lm: dspy.LM, prompt: PromptModel | None = None) -> MiproResult:
    """MIPROv2 over instructions x demo sets on train/val under ``cfg``'s settings; val is what it maximises."""
    prompt = prompt or PromptModel.resolve(cfg)
    program = create_program(cfg.task, splits.labels)
    trainset = demo_trainset(splits.train, cfg.optimizer.demo_max_image_side)
    settings, notes = fit_demos(cfg, program, trainset, lm)
    result = run_mipro(
        program, trainset, splits.val, task_lm=lm,
        metric=metric_for(cfg.task.output, fields=list(cfg.task.fields or {}) or None),
        settings=settings, seed=cfg.seed, num_threads=cfg.run.num_threads,
        prompt_lm=prompt.lm, prompt_model_sees_images=prompt.sees_images,
    )
    result.notes[:0] = notes
    return result


def fit_demos(cfg: TaskConfig, program: Classify, trainset: list[dspy.Example],
              lm: dspy.LM) -> tuple[OptimizerConfig, list[str]]:
    """The optimizer settings with demos capped to what fits the model's context (and why)."""
    settings = cfg.optimizer
    wanted = max(settings.max_labeled_demos, settings.max_bootstrapped_demos)
    fits, note = max_demos_that_fit(program, trainset, lm, wanted, cfg.model.max_new_tokens)
    if fits >= wanted:
        return settings, []
    capped = settings.model_copy(
        update={"max_labeled_demos": min(settings.max_labeled_demos, fits),
                "max_bootstrapped_demos": min(settings.max_bootstrapped_demos, fits)}
    )
    return capped, [note]
