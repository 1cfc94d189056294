"""GEPA on an image classifier: reflective instruction evolution on train, its Pareto front on val.

DSPy's GEPA runs the program on minibatches of the train split (the demo pool), shows the
reflection model each image, the answer and the feedback metric's text
(:mod:`vlmopt.optimizers.feedback`), and accepts a rewritten instruction when it beats its parent
on the minibatch; every accepted candidate is scored on the whole val split, which is where the
Pareto front (the best candidate per val image) and the winner (the best val aggregate) come
from. GEPA evolves the instruction only; demos stay as the program has them.

The reflection model is ``optimizer.prompt_model`` (:mod:`vlmopt.optimizers.prompt_model`):

* **it sees images** — DSPy 3.4's own ``InstructionProposer`` sends each ``dspy.Image`` as image
  content (it supersedes the older ``MultiModalInstructionProposer``, which it keeps for
  comparison);
* **text only** — the same proposer, with each image replaced by a note that it is not shown;
* **none** — no reflection: each proposal is the next of ``optimizer.instructions``
  (:class:`CandidateProposer`), GEPA's minibatch acceptance and val front still decide, and the
  run stops when the list is spent.

The budget is GEPA's own unit, metric calls = task-model calls (``optimizer.budget_calls``).
DSPy's ``log_dir`` checkpoint is a pickle, so it is not used; a rerun resumes by replaying
finished calls from DSPy's cache (GEPA is seeded, so it asks the same calls again).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dspy

from vlmopt._dspy_compat import InstructionProposer
from vlmopt.optimizers import budget
from vlmopt.optimizers.method_task import MethodResult, MethodTask, bare, instruction_of, n_demos

NOT_SHOWN = "[image not shown: the prompt model does not take images]"
REFLECTION_MINIBATCH = 3  # DSPy's default reflection_minibatch_size


class CandidateProposer:
    """GEPA's proposal step without a writing model: the next of the user's instructions, once each.

    ``exhausted`` is a GEPA stop condition (``gepa_kwargs["stop_callbacks"]``): the run ends when
    every instruction has been proposed.
    """

    def __init__(self, instructions: list[str]):
        self.queue = list(instructions)

    def __call__(
        self, candidate: dict[str, str], reflective_dataset: Mapping[str, Any], components_to_update: list[str]
    ) -> dict[str, str]:
        if not self.queue:
            raise RuntimeError("every optimizer.instructions candidate was already proposed")
        text = self.queue.pop(0)
        return {name: text for name in components_to_update}

    def exhausted(self, gepa_state: Any) -> bool:
        return not self.queue


class TextOnlyProposer:
    """DSPy's instruction proposer for a reflection model that takes no images: images become a note."""

    def __init__(self, proposer: InstructionProposer | None = None):
        self.proposer = proposer or InstructionProposer()

    def __call__(
        self, candidate: dict[str, str], reflective_dataset: Mapping[str, Any], components_to_update: list[str]
    ) -> dict[str, str]:
        stripped = {
            name: [_without_images(example) for example in examples] for name, examples in reflective_dataset.items()
        }
        return self.proposer(
            candidate=candidate, reflective_dataset=stripped, components_to_update=components_to_update
        )


def _without_images(value: Any) -> Any:
    if isinstance(value, dspy.Image):
        return NOT_SHOWN
    if isinstance(value, Mapping):
        return {key: _without_images(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_images(item) for item in value]
    return value


def proposer_for(task: MethodTask) -> tuple[Any, str]:
    """(GEPA's instruction proposer, the note saying which) for the task's prompt model."""
    if not task.prompt.writes:
        seed = instruction_of(task.program).strip()
        ideas = [t for t in dict.fromkeys(s.strip() for s in task.settings.instructions) if t and t != seed]
        return CandidateProposer(ideas), (
            f"GEPA without a prompt model: proposes the {len(ideas)} optimizer.instructions in turn (no reflection)"
        )
    if task.prompt.sees_images or task.prompt.lm is None:
        return InstructionProposer(), "GEPA's reflection sees the images (DSPy's InstructionProposer)"
    return TextOnlyProposer(), "GEPA's reflection model takes no images: it reads the answers and feedback only"


def run_gepa(task: MethodTask) -> MethodResult:
    """GEPA on train (reflection) and val (Pareto front, selection) under the task's budget."""
    proposer, note = proposer_for(task)
    settings = task.settings
    if settings.budget_calls is not None:
        knob = budget.gepa_metric_calls(settings.budget_calls)
        budget_kwargs: dict[str, Any] = {"max_metric_calls": knob.value}
        budget_note = knob.describe(settings.budget_calls)
    else:
        budget_kwargs = {"auto": settings.auto or "light"}
        budget_note = f"GEPA auto={budget_kwargs['auto']}"
    stop = {"stop_callbacks": proposer.exhausted} if isinstance(proposer, CandidateProposer) else {}
    optimizer = dspy.GEPA(
        metric=task.feedback_metric(),
        reflection_lm=task.prompt.writer(task.lm),
        instruction_proposer=proposer,
        reflection_minibatch_size=min(REFLECTION_MINIBATCH, len(task.trainset)),
        use_merge=False,  # one predictor: there is no second component for a merge to combine
        num_threads=task.num_threads,
        track_stats=True,
        seed=task.cfg.seed,
        gepa_kwargs=stop,
        **budget_kwargs,
    )
    with dspy.context(lm=task.lm):
        best = optimizer.compile(task.program.deepcopy(), trainset=task.trainset, valset=task.valset)
    results = best.detailed_results
    front = sorted(set().union(*(set(c) for c in results.per_val_instance_best_candidates.values())))
    history = [
        {
            "candidate": i,
            "scope": "full",
            "score": float(score),
            "instruction": instruction_of(program),
            "n_demos": n_demos(program),
            "parents": [p for p in results.parents[i] or [] if p is not None],
            "discovered_at_metric_calls": results.discovery_eval_counts[i],
            "pareto": i in front,
        }
        for i, (program, score) in enumerate(zip(results.candidates, results.val_aggregate_scores, strict=True))
    ]
    return MethodResult(
        program=bare(best, task.program),
        val_score=float(results.val_aggregate_scores[results.best_idx]),
        history=history,
        instruction_candidates=[row["instruction"] for row in history],
        notes=[note, budget_note],
        trainset=task.trainset,
        method="gepa",
        details={
            "pareto_front": front,
            "best_candidate": results.best_idx,
            "total_metric_calls": results.total_metric_calls,
            "budget": budget_note,
        },
    )
