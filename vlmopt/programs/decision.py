"""The calibrated label decision: pick ``argmax_k weight_k * P(k)`` over the measured distribution.

DSPy's experimental ReAnchor fits one multiplier per label (its Choice ``weights``) against the
metric; a label the model picks too often gets a multiplier below 1. This module applies fitted
weights at prediction time through DSPy's own Choice decoding, so the frozen program decides
exactly as ReAnchor scored it (ties go to the unweighted winner, then declaration order).

The distribution it returns is the reweighted one, renormalised (``w_k p_k / sum_j w_j p_j``):
the probabilities the decision was actually taken on, which the run records and ECE then use.
The weights are fitted for accuracy, not for calibrated confidences, so ECE "after" scores a
different distribution than ECE "before" (the measured one) and can get worse while accuracy
improves (bench P8 shows both).

Example::

    label, probabilities = weighted_label(signature, {"cat": 0.4, "dog": 0.6}, {"cat": 3.7, "dog": 1.0})
    label            # "cat"
    probabilities    # {"cat": 0.711..., "dog": 0.288...}
"""

from __future__ import annotations

from collections.abc import Mapping

import dspy

from vlmopt._dspy_compat import choice_decision
from vlmopt.errors import VlmoptError
from vlmopt.programs.signatures import answer_fields


class UnmeasuredDecisionError(VlmoptError, ValueError):
    """A calibrated decision met a prediction without a measured label distribution."""

    def __init__(self) -> None:
        super().__init__(
            "this program's label decision is calibrated (ReAnchor weights) and needs the label probabilities "
            "the backend measures: set backend.label_probabilities: true and keep task.structured_generation on"
        )


def weighted_label(
    signature: type[dspy.Signature], probabilities: Mapping[str, float], weights: Mapping[str, float]
) -> tuple[str, dict[str, float]]:
    """``(label, reweighted distribution)`` for one prediction of a single-label signature."""
    (field,) = answer_fields(signature)
    label = choice_decision(signature, field, probabilities, weights)
    scores = {k: p * weights.get(k, 1.0) for k, p in probabilities.items()}
    total = sum(scores.values())
    return label, {k: s / total for k, s in scores.items()}
