"""SIMBA on an image classifier: mini-batch ascent on train, its candidates chosen on val.

DSPy's SIMBA samples the program several times per train image (the task model at temperature
1), finds the images where the samples disagree, and either appends a successful trajectory as a
demo or asks the writing model for a rule contrasting a better and a worse trajectory (the
feedback metric's text is the reward info it reads, :mod:`vlmopt.optimizers.feedback`). SIMBA
itself scores only on train; under the held-out protocol its final candidates are scored on val
here and the best one there is the result, so the choice is made where the other methods make it.

The rule writer reads the trajectories as JSON text: DSPy's SIMBA masks images as
``<non-serializable: Image>``, so it never sees an image, whatever the prompt model can take.
SIMBA has no run without a writer (half its steps are rules): with ``prompt_model: none`` it
refuses before any work (``methods.cannot_run``).
"""

from __future__ import annotations

import dspy

from vlmopt.optimizers import budget
from vlmopt.optimizers.method_task import MethodResult, MethodTask, bare, instruction_of, n_demos, val_score

DSPY_MAX_STEPS = 8  # SIMBA's default max_steps


def run_simba(task: MethodTask) -> MethodResult:
    """SIMBA on the train split, then its candidates on val; the best on val is chosen."""
    settings = task.settings
    bsize = min(settings.minibatch_size, len(task.trainset))
    num_candidates = settings.num_candidates or budget.DSPY_SIMBA_CANDIDATES
    knob = budget.simba_steps(
        settings.budget_calls,
        default=DSPY_MAX_STEPS,
        bsize=bsize,
        num_candidates=num_candidates,
        n_train=len(task.trainset),
        n_val=len(task.valset),
    )
    with dspy.context(lm=task.lm):
        optimizer = dspy.SIMBA(
            metric=task.feedback_metric(),
            bsize=bsize,
            num_candidates=num_candidates,
            max_steps=knob.value,
            max_demos=max(settings.max_labeled_demos, settings.max_bootstrapped_demos),
            prompt_model=task.prompt.writer(task.lm),
            demo_input_field_maxlen=0,  # 0 = never cut a field: a cut data URI would no longer be an image
            num_threads=task.num_threads,
        )
        best = optimizer.compile(task.program.deepcopy(), trainset=task.trainset, seed=task.cfg.seed)
    candidates = [(entry["program"], float(entry["score"])) for entry in best.candidate_programs]
    scored = [(program, train, val_score(program, task)) for program, train in candidates]
    chosen = max(range(len(scored)), key=lambda i: (scored[i][2], scored[i][1], -i))
    history = [
        {
            "candidate": i,
            "scope": "full",
            "score": val,
            "train_score": train,
            "instruction": instruction_of(program),
            "n_demos": n_demos(program),
            "chosen": i == chosen,
        }
        for i, (program, train, val) in enumerate(scored)
    ]
    steps = [{"step": step, "scope": "simba_step", **log} for step, log in sorted(best.trial_logs.items())]
    note = "SIMBA's rule writer reads trajectories as text (DSPy masks the images)"
    return MethodResult(
        program=bare(scored[chosen][0], task.program),
        val_score=scored[chosen][2],
        history=history + steps,
        instruction_candidates=list(dict.fromkeys(row["instruction"] for row in history)),
        notes=[note, knob.describe(settings.budget_calls)],
        trainset=task.trainset,
        method="simba",
        details={"bsize": bsize, "num_candidates": num_candidates, "max_steps": knob.value},
    )
