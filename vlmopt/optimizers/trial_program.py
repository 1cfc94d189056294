"""A search trial's program as small JSON the study can hold, and the program rebuilt from it.

Workers may run on other machines, so what a trial found must live in the study itself, not in
one worker's run directory. The program is the config's program (from the trial's settings) plus
what MIPROv2 chose: the instruction and the demos. A demo is stored as the id of its train image
and its other fields (the label, a bootstrapped demo's reasoning); its image is the train split's
image, downscaled the way the search downscaled it. Image bytes never enter the database.

Example::

    record = program_record(result.program, trainset)        # -> trial.user_attrs["program"]
    winner = rebuild_trial(cfg, study.best_trial)             # TaskConfig, splits, program
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dspy
from optuna.trial import FrozenTrial

from vlmopt._dspy_compat import input_keys
from vlmopt.config import TaskConfig, TaskSpec
from vlmopt.datasets import LoadedSplits, load_splits
from vlmopt.datasets.images import downscale_dspy_image
from vlmopt.optimizers.search_space import apply_settings
from vlmopt.programs import Classify, create_program

PROGRAM_ATTR = "program"


def demo_trainset(train: list[dspy.Example], demo_max_image_side: int) -> list[dspy.Example]:
    """The train split as MIPROv2 sees it: demo images downscaled (each one costs context)."""
    return [ex.copy(image=downscale_dspy_image(ex.image, demo_max_image_side)) for ex in train]


def program_record(program: dspy.Module, trainset: list[dspy.Example]) -> dict[str, Any]:
    """``{"instruction", "demos": [{"id", "fields", "input_keys"}]}`` for a one-predictor program."""
    (predictor,) = program.predictors()
    ids_by_url = {ex.image.url: str(ex.id) for ex in trainset}
    demos = []
    for demo in predictor.demos:
        url = demo["image"].url
        if url not in ids_by_url:
            raise ValueError("a demo's image is not one of the train split's images")
        demos.append(
            {
                "id": ids_by_url[url],
                "fields": {k: v for k, v in demo.items() if k != "image"},
                "input_keys": input_keys(demo),
            }
        )
    return {"instruction": predictor.signature.instructions, "demos": demos}


def rebuild_program(
    task: TaskSpec, labels: list[str] | None, record: dict[str, Any], trainset: list[dspy.Example]
) -> Classify:
    """The program a record describes, over the same (downscaled) train images."""
    program = create_program(task, labels)
    (predictor,) = program.predictors()
    predictor.signature = predictor.signature.with_instructions(record["instruction"])
    by_id = {str(ex.id): ex for ex in trainset}
    demos = []
    for demo in record["demos"]:
        if demo["id"] not in by_id:
            raise ValueError(f"demo image {demo['id']!r} is not in the train split")
        example = dspy.Example(image=by_id[demo["id"]].image, **demo["fields"])
        demos.append(example.with_inputs(*demo["input_keys"]) if demo["input_keys"] is not None else example)
    predictor.demos = demos
    return program


@dataclass
class RebuiltTrial:
    """A trial's config (its settings applied), its splits (at its image side) and its program."""

    cfg: TaskConfig
    splits: LoadedSplits
    program: Classify


def rebuild_trial(cfg: TaskConfig, trial: FrozenTrial, splits: LoadedSplits | None = None) -> RebuiltTrial:
    """Rebuild a finished search trial, e.g. the winner, to score it on test and freeze it.

    ``splits`` may be passed when already loaded at the trial's ``max_image_side``.
    """
    trial_cfg = apply_settings(cfg, trial.params)
    splits = splits or load_splits(trial_cfg)
    trainset = demo_trainset(splits.train, trial_cfg.optimizer.demo_max_image_side)
    program = rebuild_program(trial_cfg.task, splits.labels, trial.user_attrs[PROGRAM_ATTR], trainset)
    return RebuiltTrial(trial_cfg, splits, program)
