"""Which rows are worth a person's time, and in what order: the least confident first.

A row is selected for any of these reasons (the ``--select`` names):

* ``abstained`` — the artifact's threshold declined to answer it (rows that carry ``abstained``);
* ``low_confidence`` — the measured confidence of its answer is below ``max_confidence``;
* ``invalid`` — the model gave no answer in the class set at all;
* ``disagree`` — a gold answer exists and the model's differs.

Order is expected value: a label a person adds where the model is least sure teaches the next
optimize the most, so rows go by confidence, lowest first; an invalid output counts as
confidence 0; a valid answer whose confidence was not measured (a backend without
log-probabilities) goes last; ties by id, so the order is the same every run.

Example::

    picked = select_for_review(source.candidates, max_confidence=0.8, limit=50)
    picked[0].candidate.id, picked[0].reasons      # "img_7", ("low_confidence", "disagree")
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vlmopt.review.errors import ReviewError
from vlmopt.review.source import Candidate

SELECTORS = ("abstained", "low_confidence", "invalid", "disagree")
"""Every reason a row can be selected for, in the order a task lists them."""
DEFAULT_MAX_CONFIDENCE = 0.8
"""``low_confidence`` means below this (the measured probability of the answer given)."""


@dataclass(frozen=True)
class Selected:
    """A candidate chosen for review and every reason it was chosen for."""

    candidate: Candidate
    reasons: tuple[str, ...]


def reasons_for(candidate: Candidate, selectors: Iterable[str], max_confidence: float) -> tuple[str, ...]:
    """The ``selectors`` that pick ``candidate``, in :data:`SELECTORS` order (empty: not worth a review)."""
    wanted = set(selectors)
    found = {
        "abstained": candidate.abstained,
        "low_confidence": candidate.confidence is not None and candidate.confidence < max_confidence,
        "invalid": candidate.answer is None,
        "disagree": candidate.gold is not None and candidate.answer != candidate.gold,
    }
    return tuple(name for name in SELECTORS if name in wanted and found[name])


def review_order(candidate: Candidate) -> tuple[bool, float, str]:
    """Sort key: least confident first (invalid = 0), unmeasured confidence last, then by id."""
    confidence = 0.0 if candidate.answer is None else candidate.confidence
    return (confidence is None, confidence or 0.0, candidate.id)


def select_for_review(
    candidates: Sequence[Candidate],
    *,
    selectors: Iterable[str] = SELECTORS,
    max_confidence: float = DEFAULT_MAX_CONFIDENCE,
    limit: int | None = None,
) -> list[Selected]:
    """The candidates any selector picks, least confident first, at most ``limit`` of them."""
    selectors = tuple(selectors)
    unknown = sorted(set(selectors) - set(SELECTORS))
    if unknown:
        raise ReviewError(f"--select {','.join(unknown)}: not a reason to review; choose from {','.join(SELECTORS)}")
    picked = [
        Selected(c, why)
        for c in sorted(candidates, key=review_order)
        if (why := reasons_for(c, selectors, max_confidence))
    ]
    return picked[:limit] if limit is not None else picked
