"""Label distribution and confidence of one prediction — kept in this one place.

The backends measure the distribution (never numbers the model writes as text) and hand it to
DSPy as the prediction's ``logprobs``: one decision entry whose ranked alternatives are the
labels (written by ``vlmopt.serving.label_scoring.decision_logprobs``). This module reads it back
for the decision and the run records — or, when the program's decision was calibrated, the
reweighted distribution the decision was taken on (``Classify`` puts it under
``label_probabilities``).

The reading lives here, not beside the writing in ``serving``: a program sees only what
``dspy.LM`` hands it (the prediction's ``logprobs``, a plain OpenAI-shaped dict), so reading it
needs neither torch nor a backend, and ``import vlmopt.programs`` (and ``load_artifact``) stays
free of both. The two sides share only that dict's shape, which DSPy defines.

Example::

    pred = dspy.Predict(sig)(image=img)          # lm from create_lm(..., logprobs on)
    probs = prediction_probabilities(pred)       # {"cat": 0.71, "dog": 0.2, "bird": 0.09}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

PROBABILITIES_KEY = "label_probabilities"
"""Prediction key of the distribution a calibrated decision was taken on (set by ``Classify``)."""


def prediction_probabilities(prediction: Any, labels: Sequence[str] | None = None) -> dict[str, float] | None:
    """Label -> probability from a prediction's ``logprobs`` (see module docstring), else None.

    ``labels``, when given, must be exactly the ranked alternatives; a free-text or multi-field
    prediction (token-level log-probs) returns None rather than a wrong distribution.
    """
    logprobs = prediction.get("logprobs") if hasattr(prediction, "get") else getattr(prediction, "logprobs", None)
    content = (logprobs or {}).get("content") if isinstance(logprobs, Mapping) else None
    if not content or len(content) != 1:
        return None
    top = content[0].get("top_logprobs") or []
    probs = {entry["token"]: math.exp(entry["logprob"]) for entry in top}
    if len(probs) < 2 or (labels is not None and set(probs) != set(labels)):
        return None
    if abs(sum(probs.values()) - 1.0) > 1e-4:
        return None
    return probs


def label_confidence(pred: Any) -> tuple[dict[str, float] | None, float | None]:
    """``(probabilities, confidence)``: label -> p, and p of the answer given; (None, None) if unmeasured."""
    if not pred.get("valid", True):
        return None, None
    probabilities = pred.get(PROBABILITIES_KEY) or prediction_probabilities(pred)
    answer = pred.get("label")
    if not probabilities or not isinstance(answer, str):
        return None, None
    return probabilities, probabilities.get(answer)


def top_labels(probabilities: Mapping[str, float] | None, k: int = 3) -> list[dict[str, Any]] | None:
    """The ``k`` most likely labels, most likely first: ``[{"label", "probability"}, ...]``; None if unmeasured."""
    if not probabilities:
        return None
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])[:k]
    return [{"label": label, "probability": float(p)} for label, p in ranked]
