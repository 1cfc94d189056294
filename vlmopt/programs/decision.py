"""The label decision over the measured distribution: calibration weights, then abstention.

Both steps run inside ``Classify.forward``, so ``evaluate`` and ``predict`` (any backend) apply
them by calling the program, through the functions here and nowhere else.

**Calibration** picks ``argmax_k weight_k * P(k)``.

DSPy's experimental ReAnchor fits one multiplier per label (its Choice ``weights``) against the
metric; a label the model picks too often gets a multiplier below 1. This module applies fitted
weights at prediction time through DSPy's own Choice decoding, so the frozen program decides
exactly as ReAnchor scored it (ties go to the unweighted winner, then declaration order).

The distribution it returns is the reweighted one, renormalised (``w_k p_k / sum_j w_j p_j``):
the probabilities the decision was actually taken on, which the run records and ECE then use.
The weights are fitted for accuracy, not for calibrated confidences, so ECE "after" scores a
different distribution than ECE "before" (the measured one) and can get worse while accuracy
improves (bench P8 shows both).

**Abstention** (:func:`abstains`) answers only when the confidence of the distribution the
decision was taken on reaches the program's threshold (``confidence >= threshold``, confidence =
``max_prob`` or ``margin``, see :mod:`vlmopt.metrics.selective`); below it the prediction is
marked ``abstained`` and keeps its top label as a suggestion.

Example::

    label, probabilities = weighted_label(signature, {"cat": 0.4, "dog": 0.6}, {"cat": 3.7, "dog": 1.0})
    label            # "cat"
    probabilities    # {"cat": 0.711..., "dog": 0.288...}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dspy

from vlmopt._dspy_compat import choice_decision
from vlmopt.errors import VlmoptError
from vlmopt.metrics.selective import answers, confidence_of
from vlmopt.programs.signatures import answer_fields

ABSTAINED_KEY = "abstained"
"""Prediction key: True when the program abstained (its confidence fell below its threshold)."""
CALIBRATED = "calibrated (ReAnchor weights)"
ABSTAINS = "thresholded (it abstains below a confidence)"


class UnmeasuredDecisionError(VlmoptError, ValueError):
    """A calibrated or abstaining decision met a prediction without a measured label distribution."""

    def __init__(self, what: str = CALIBRATED) -> None:
        super().__init__(
            f"this program's label decision is {what} and needs the label probabilities "
            "the backend measures: set backend.label_probabilities: true and keep task.structured_generation on"
        )


def abstains(probabilities: Mapping[str, float], abstention: Mapping[str, Any]) -> bool:
    """Whether the program abstains on this distribution (``abstention``: ``{"threshold", "confidence"}``)."""
    return not answers(confidence_of(probabilities, abstention["confidence"]), abstention["threshold"])


def weighted_label(
    signature: type[dspy.Signature], probabilities: Mapping[str, float], weights: Mapping[str, float]
) -> tuple[str, dict[str, float]]:
    """``(label, reweighted distribution)`` for one prediction of a single-label signature."""
    (field,) = answer_fields(signature)
    label = choice_decision(signature, field, probabilities, weights)
    scores = {k: p * weights.get(k, 1.0) for k, p in probabilities.items()}
    total = sum(scores.values())
    return label, {k: s / total for k, s in scores.items()}
