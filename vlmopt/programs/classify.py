"""The ``Classify`` module: one typed prediction per image, invalid answers kept, never raised.

It wraps ``dspy.Predict`` (or ``dspy.ChainOfThought`` when reasoning is on) so MIPROv2 can
rewrite its instructions and demos, and binds the prompt adapter to the program — the framing is
part of what is optimized and frozen, not a global setting.

Every prediction carries, besides the answer fields:

* ``valid`` — False when the model's answer was not in the label set (answer fields are None);
* ``raw_output`` — the model's text, valid or not;
* ``label_normalized`` — True when opt-in normalisation was needed to match a label.

A program whose label decision was calibrated after the search (``label_weights``, fitted by
DSPy's ReAnchor, see :mod:`vlmopt.optimizers.reanchor`) answers ``argmax_k w_k P(k)`` over the
label distribution the backend measured, and carries that reweighted distribution as
``label_probabilities``. A program with an ``abstention`` threshold (chosen on val, see
:mod:`vlmopt.optimizers.abstention`) marks an unsure prediction ``abstained`` (its label stays the
top label). Both need a backend that measures label probabilities.

Example::

    program = create_program(cfg.task, labels=["cat", "dog"])
    with dspy.context(lm=lm):
        pred = program(image=dspy.Image("cat.jpg"))
    pred.label, pred.valid, pred.raw_output
"""

from __future__ import annotations

from typing import Any

import dspy

from vlmopt._dspy_compat import record_in_trace
from vlmopt.config import TaskSpec
from vlmopt.programs.adapter import NORMALIZED_KEY, RAW_KEY, create_adapter
from vlmopt.programs.confidence import PROBABILITIES_KEY, prediction_probabilities
from vlmopt.programs.decision import ABSTAINED_KEY, ABSTAINS, UnmeasuredDecisionError, abstains, weighted_label
from vlmopt.programs.signatures import answer_fields, make_signature


class Classify(dspy.Module):
    """Image in, typed answer out; see the module docstring for the prediction's extra fields."""

    def __init__(self, signature: type[dspy.Signature], *, reasoning: bool = False, adapter=None):
        super().__init__()
        self.predict = dspy.ChainOfThought(signature) if reasoning else dspy.Predict(signature)
        self.adapter = adapter or create_adapter("compact", structured=True)
        self.label_weights: dict[str, float] | None = None  # ReAnchor's fitted Choice weights, if kept
        self.abstention: dict[str, Any] | None = None  # {"threshold", "confidence"} chosen on val, if any

    @property
    def predictor(self) -> dspy.Predict:
        """The one ``dspy.Predict`` holding the instruction and demos (inside ChainOfThought with reasoning)."""
        return self.predict.predict if isinstance(self.predict, dspy.ChainOfThought) else self.predict

    @property
    def signature(self) -> type[dspy.Signature]:
        """The signature as optimized (instructions included)."""
        return self.predictor.signature

    def forward(self, image: dspy.Image) -> dspy.Prediction:
        with dspy.context(adapter=self.adapter):
            try:
                pred = self.predict(image=image)
            except dspy.AdapterParseError as err:
                invalid = self._invalid(err.lm_response)
                record_in_trace(self.predictor, {"image": image}, invalid)  # so GEPA reflects on it
                return invalid
        pred.valid = True
        pred[NORMALIZED_KEY] = bool(pred.get(NORMALIZED_KEY, False))
        if self.label_weights:
            self._decide(pred)
        if self.abstention:
            self._abstain(pred)
        return pred

    def _decide(self, pred: dspy.Prediction) -> None:
        """Replace the label by the calibrated decision over the measured distribution."""
        probabilities = prediction_probabilities(pred)
        if probabilities is None:
            raise UnmeasuredDecisionError()
        label, distribution = weighted_label(self.signature, probabilities, self.label_weights)
        pred.label, pred[PROBABILITIES_KEY] = label, distribution

    def _abstain(self, pred: dspy.Prediction) -> None:
        """Mark the prediction abstained when the distribution it was decided on is not sure enough."""
        probabilities = pred.get(PROBABILITIES_KEY) or prediction_probabilities(pred)
        if probabilities is None:
            raise UnmeasuredDecisionError(ABSTAINS)
        pred[ABSTAINED_KEY] = abstains(probabilities, self.abstention)

    def _invalid(self, raw: str | None) -> dspy.Prediction:
        answers = {name: None for name in answer_fields(self.signature)}
        return dspy.Prediction(**answers, valid=False, **{RAW_KEY: raw or "", NORMALIZED_KEY: False})


def create_program(task: TaskSpec, labels: list[str] | None = None) -> Classify:
    """The program a task config describes (signature, reasoning, adapter)."""
    adapter = create_adapter(
        task.adapter, structured=task.structured_generation, normalize_labels=task.normalize_labels
    )
    return Classify(make_signature(task, labels), reasoning=task.reasoning, adapter=adapter)
