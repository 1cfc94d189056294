"""Calibrate the frozen program's label decision on val with DSPy's experimental ``ReAnchor``.

ReAnchor fits one multiplier per label (a ``Choice``'s ``weights``) against the metric: a label
the model picks too often gets a weight below 1. It keeps the fitted weights only when they beat
the plain argmax on the fitting set *and* a 5-fold check (pick on four folds, score on the fifth);
otherwise the decision stays as it was.

ReAnchor reads the probabilities a decision backend returns. DSPy's generative path would have
the VLM *write* its probabilities as text and move image demos into the instruction as JSON, so
this module gives ReAnchor a decision backend of its own instead: :class:`MeasuredLabelClient`
answers each decision request with the label distribution the task VLM *measured* for the
optimized program's exact prompt (the same numbers the run records hold). Each image is
measured once, through DSPy's cache like every other call, and then answered from memory while
ReAnchor scores its candidate weights (its ``require_cache`` contract).

Example::

    result = calibrate_decision(program, splits.val, lm=lm, metric=label_accuracy, num_threads=4)
    result.weights        # {"cat": 3.7, "dog": 1.0}, or None when ReAnchor kept the plain argmax
    program.label_weights = result.weights
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.experimental import ReAnchor

from vlmopt.datasets.images import serialized_image_url
from vlmopt.programs import Classify
from vlmopt.programs.confidence import prediction_probabilities
from vlmopt.programs.signatures import answer_fields

METHOD = "dspy.experimental.ReAnchor"
UNMEASURED = (
    "the backend measured no label distribution for the optimized program (needs a single-label task, "
    "task.structured_generation on, reasoning off and backend.label_probabilities on)"
)


class UnmeasuredLabelsError(ValueError):
    """The optimized program's predictions carry no measured label distribution to calibrate."""


@dataclass
class Calibration:
    """What ReAnchor fitted on val: the kept weights (None = plain argmax kept) and its report."""

    weights: dict[str, float] | None
    report: dict[str, Any] = field(default_factory=dict)
    note: str | None = None


class MeasuredLabelClient:
    """A DSPy decision-request client backed by the task VLM's measured label distribution.

    DSPy calls it with ``state`` (the decision request: inputs serialised) and ``questions``; it
    runs the optimized ``program`` on the request's image under the task ``lm`` and answers the
    label question with the distribution the backend measured. Answers are memoised per image.
    """

    supports_decision_requests = True
    cache = True

    def __init__(self, program: Classify, lm: dspy.LM):
        self.program = program
        self.lm = lm
        self.field = answer_fields(program.signature)[0]
        self.measured: dict[str, dict[str, float]] = {}  # image URL -> distribution
        self._lock = threading.Lock()

    def __call__(self, state: dict[str, Any], questions: dict[str, Any]) -> dict[str, Any]:
        url = serialized_image_url(state["inputs"]["image"])
        if url is None:
            raise ValueError("a decision request without an inline image")
        probabilities = self.measure(url)
        return {self.field: {"probabilities": dict(probabilities), "confidence": max(probabilities.values())}}

    def measure(self, url: str) -> dict[str, float]:
        """The label distribution of the image at ``url`` (measured once, then from memory)."""
        with self._lock:
            if url in self.measured:
                return self.measured[url]
        with dspy.context(lm=self.lm):
            pred = self.program(image=dspy.Image(url))
        probabilities = prediction_probabilities(pred) if pred.get("valid", True) else None
        if probabilities is None:
            raise UnmeasuredLabelsError(UNMEASURED)
        with self._lock:
            self.measured[url] = probabilities
        return probabilities


def decision_view(program: Classify) -> dspy.Predict:
    """A ``Predict`` over the program's signature whose label output ReAnchor can treat as a Choice."""
    signature = program.signature
    name = answer_fields(signature)[0]
    return dspy.Predict(signature.with_updated_fields(name, desc="The image's class."))


def calibrate_decision(
    program: Classify, valset: list[dspy.Example], *, lm: dspy.LM, metric, num_threads: int
) -> Calibration:
    """Run ReAnchor on ``valset`` over the measured distributions; never changes ``program``.

    Every val image is measured first (cached calls); one without a distribution (an invalid
    answer) is left out of the fit and counted in the note — it is wrong under any weights.
    """
    if program.label_weights:
        raise ValueError("the program's decision is already calibrated")
    client = MeasuredLabelClient(program, lm)
    measured = _measurable(client, valset, num_threads)
    if not measured:
        return Calibration(None, note=f"calibration skipped: {UNMEASURED}")
    reanchor = ReAnchor(metric, num_threads=num_threads)
    with dspy.context(lm=client):
        calibrated = reanchor.compile(decision_view(program), trainset=measured)
    weights = (calibrated.fields.get(client.field) or {}).get("weights")
    kept = weights if weights and any(w != 1.0 for w in weights.values()) else None
    notes = [] if kept else ["calibration: ReAnchor kept the plain argmax (fitted weights did not win on val)"]
    if len(measured) < len(valset):
        notes.append(f"calibration fitted on {len(measured)} of {len(valset)} val images; the others had no "
                     "measured label distribution (invalid answers)")
    return Calibration(kept, reanchor.report, "; ".join(notes) or None)


def _measurable(client: MeasuredLabelClient, valset: list[dspy.Example], num_threads: int) -> list[dspy.Example]:
    """The val examples whose label distribution the backend measured (measured here, in parallel)."""

    def measure(example: dspy.Example) -> bool:
        try:
            client.measure(example.image.url)
        except UnmeasuredLabelsError:
            return False
        return True

    parallel = dspy.Parallel(num_threads=num_threads, max_errors=1, access_examples=False, disable_progress_bar=True)
    return [example for example, ok in zip(valset, parallel([(measure, ex) for ex in valset]), strict=True) if ok]


def decision_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """What calibration moves: accuracy, macro-F1, ECE and Brier score of one evaluation."""
    return {
        "n": metrics["n"],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics.get("macro_f1"),
        "ece": metrics.get("ece"),
        "brier": (metrics.get("calibration") or {}).get("brier"),
    }


def calibration_summary(
    result: Calibration, before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """``calibration.json``: the fitted weights, ReAnchor's report, and each split before and after."""
    return {
        "method": METHOD,
        "fitted_on": "val",
        "kept": result.weights is not None,
        "weights": result.weights,
        "note": result.note,
        "reanchor": result.report,
        **{split: {"before": decision_metrics(before[split]), "after": decision_metrics(after[split])}
           for split in before},
    }
