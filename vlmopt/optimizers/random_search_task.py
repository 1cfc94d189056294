"""Random search over demo sets: DSPy's ``BootstrapFewShotWithRandomSearch`` on train, chosen on val.

It needs no writing model: every candidate keeps the config's instruction and differs in its
demos — zero-shot, labelled demos only, the unshuffled bootstrap, then bootstrapped demo sets
from shuffled train orders of random sizes. Each candidate is scored on the whole val split and
the best one there is the result (the earliest among equals). It is the baseline every
prompt-writing method should beat.
"""

from __future__ import annotations

import contextlib
import io

import dspy

from vlmopt.optimizers import budget
from vlmopt.optimizers.method_task import MethodResult, MethodTask, bare, instruction_of, n_demos


def run_random_search(task: MethodTask) -> MethodResult:
    """Bootstrap demo sets from train, score each candidate on val, keep the best."""
    settings = task.settings
    knob = budget.random_search_candidates(
        settings.budget_calls,
        default=settings.num_candidates or budget.DSPY_RANDOM_SEARCH_CANDIDATES,
        n_train=len(task.trainset),
        n_val=len(task.valset),
    )
    notes = [knob.describe(settings.budget_calls)]
    shuffled = knob.value
    if settings.max_bootstrapped_demos == 0 and shuffled:  # DSPy draws 1..max bootstrapped demos per candidate
        shuffled = 0
        notes.append("random search: max_bootstrapped_demos is 0, so only the three fixed candidates run")
    optimizer = dspy.BootstrapFewShotWithRandomSearch(
        metric=task.metric,
        max_bootstrapped_demos=settings.max_bootstrapped_demos,
        max_labeled_demos=settings.max_labeled_demos,
        num_candidate_programs=shuffled,
        num_threads=task.num_threads,
    )
    with dspy.context(lm=task.lm), contextlib.redirect_stdout(io.StringIO()):  # DSPy prints its progress
        best = optimizer.compile(task.program.deepcopy(), trainset=task.trainset, valset=task.valset)
    history = [
        {
            "candidate": entry["seed"],
            "scope": "full",
            "score": _mean(entry["subscores"]),
            "instruction": instruction_of(entry["program"]),
            "n_demos": n_demos(entry["program"]),
            "chosen": entry["program"] is best,
        }
        for entry in best.candidate_programs
    ]
    chosen = next(row for row in history if row["chosen"])
    return MethodResult(
        program=bare(best, task.program),
        val_score=chosen["score"],
        history=history,
        instruction_candidates=[instruction_of(task.program)],
        notes=notes,
        trainset=task.trainset,
        method="random_search",
        details={"num_candidate_programs": shuffled},
    )


def _mean(scores: list[float]) -> float:
    return sum(float(s) for s in scores) / len(scores) if scores else 0.0
