"""Label distribution and confidence of one prediction — kept in this one place.

The backends measure the distribution (never numbers the model writes as text) and hand it to
DSPy as the prediction's ``logprobs``: one decision entry whose ranked alternatives are the
labels (see ``vlmopt.serving.label_scoring``). This module reads it back for the run records —
or, when the program's decision was calibrated, the reweighted distribution the decision was
taken on (``Classify`` puts it under ``label_probabilities``).
"""

from __future__ import annotations

from typing import Any

from vlmopt.serving.label_scoring import prediction_probabilities

PROBABILITIES_KEY = "label_probabilities"
"""Prediction key of the distribution a calibrated decision was taken on (set by ``Classify``)."""


def label_confidence(pred: Any) -> tuple[dict[str, float] | None, float | None]:
    """``(probabilities, confidence)``: label -> p, and p of the answer given; (None, None) if unmeasured."""
    if not pred.get("valid", True):
        return None, None
    probabilities = pred.get(PROBABILITIES_KEY) or prediction_probabilities(pred)
    answer = pred.get("label")
    if not probabilities or not isinstance(answer, str):
        return None, None
    return probabilities, probabilities.get(answer)
