"""The one seam to DSPy's internals: every private or undocumented DSPy API vlmopt relies on.

DSPy 3.4 already deprecates much of what 3.5 removes, and private names move without notice.
Everything vlmopt needs beyond DSPy's public API (top-level ``dspy`` names, the ``__all__`` of
``dspy.lm15``, ``dspy.experimental``, ``dspy.adapters`` ...) is reached here and nowhere else;
``tests/test_dspy_compat.py`` pins the behaviour relied on, one test per entry, and checks that
no other module imports a private DSPy name or overrides a private DSPy method that this module
does not vouch for. Everything is resolved when this module is imported, so a DSPy that lacks
one of them fails at once, in one place, with a :class:`DSPyCompatError` naming the missing
piece and the DSPy to install — not with an ``AttributeError`` in the middle of a run.

Example::

    from vlmopt._dspy_compat import structured_outputs_model
    structured_outputs_model(signature).model_json_schema()   # the schema DSPy's JSONAdapter sends
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import dspy
import pydantic

from vlmopt import __version__
from vlmopt.errors import VlmoptError

SUPPORTED_DSPY = "dspy>=3.4.1,<3.5"
"""The DSPy range this seam is written against (pyproject's pin; a test keeps the two equal)."""


class DSPyCompatError(VlmoptError, RuntimeError):
    """The installed DSPy lacks an internal API vlmopt relies on (renamed, removed or re-shaped).

    A user fixes it by installing the DSPy range the message names, so the CLI prints it as one line.
    """

    def __init__(self, thing: str):
        super().__init__(
            f"vlmopt {__version__} relies on DSPy's {thing} (DSPy 3.4); this DSPy ({dspy.__version__}) "
            f"does not have it: install {SUPPORTED_DSPY!r}"
        )


def _private(module: str, name: str) -> Any:
    """``module.name`` from DSPy, or :class:`DSPyCompatError` naming it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise DSPyCompatError(f"{module}.{name}") from None


def require_method(cls: type, name: str, params: tuple[str, ...]) -> None:
    """Fail now if DSPy renamed a private method vlmopt calls or overrides, or changed its leading parameters."""
    method = getattr(cls, name, None)
    found = tuple(inspect.signature(method).parameters)[1 : len(params) + 1] if callable(method) else None
    if found != params:
        raise DSPyCompatError(f"{cls.__module__}.{cls.__qualname__}.{name}({', '.join(params)})")


# ─── lm15 internals (the engines' side) ────────────────────────────────────────────────────────

judgments_in_schema = _private("dspy._vendor.lm15.judgments", "judgments_in_schema")
"""lm15's reader of a json_schema's judgments: ``{field: Judgment(name, kind, keys ...)}``.

``serving/label_scoring.classifier_field`` relies on a one-enum-property schema (what DSPy sends
for a ``Literal`` output) reading as one ``kind="choice"`` judgment whose ``keys`` are the labels
in schema order; that is what makes a request a classifier request, for every engine alike.
"""

normalize_logprobs = _private("dspy._vendor.lm15.judgments", "normalize_logprobs")
"""lm15's softmax over ``{key: log-score}``: ``serving/label_scoring.distribution`` normalises the
summed label log-probs with it, so both engines' distributions are lm15's own normalisation."""

validate_request = _private("dspy.clients.engines.base", "validate_request")
"""DSPy's check of an engine's ``Request``: refuses a non-``Request`` and execution controls
(``n``, ``stream``, ``model`` ...) smuggled into ``Config.extensions``. The in-process engine
(``serving/transformers_engine``) runs it first, as DSPy's built-in engines do."""

_request_kwargs = _private("dspy.clients.lm15_boundary", "request_kwargs")


def openai_chat_messages(request) -> list[dict[str, Any]]:
    """The OpenAI chat ``messages`` DSPy sends for a ``dspy.lm15.Request`` (images as data URLs).

    ``serving/vllm_probabilities`` scores each label over exactly the messages the generation
    request sent; lm15 has no public outbound-body converter, DSPy's boundary module has one.
    """
    return _request_kwargs(request, "chat")["messages"]


# ─── adapters ──────────────────────────────────────────────────────────────────────────────────

_structured_outputs = _private("dspy.adapters.json_adapter", "_get_structured_outputs_response_format")


def structured_outputs_model(signature: type[dspy.Signature]) -> type[pydantic.BaseModel]:
    """The pydantic model whose JSON schema DSPy's JSONAdapter sends as ``response_format``.

    ``artifacts.response_format`` renders the portable prompt's schema with it, so an exported
    prompt carries the very schema a DSPy run sent (``Literal`` outputs as string enums, every
    property required, no additional properties).
    """
    return _structured_outputs(signature, use_native_function_calling=False)


format_field_value = _private("dspy.adapters.utils", "format_field_value")
"""How DSPy's adapters render an input field's value; ``programs/adapter.CompactAdapter`` uses it
so a ``dspy.Image`` becomes DSPy's custom-type marker string, which DSPy then splits into an
``image_url`` content part (the image reaches the model as an image, not as text)."""

serialize_for_json = _private("dspy.adapters.utils", "serialize_for_json")
"""DSPy's value -> JSON-able form (pydantic, ``str`` fallback); ``CompactAdapter`` writes demo
answers with it, so they read back through DSPy's own JSON parsing."""

ADAPTER_HOOKS: dict[str, tuple[type, tuple[str, ...]]] = {
    "_call_postprocess": (dspy.Adapter, ("processed_signature", "original_signature", "outputs", "lm", "lm_kwargs")),
    "_prepare_response_format": (dspy.JSONAdapter, ("lm", "lm_kwargs", "signature")),
}
"""Private adapter methods ``programs/adapter`` overrides.

* ``Adapter._call_postprocess``: called by ``__call__``/``acall`` with the LM's outputs (dicts
  with ``text``, and ``logprobs`` when asked); returns one dict per output, whose extra keys
  survive into the ``dspy.Prediction`` — how every answer carries its ``raw_output``.
* ``JSONAdapter._prepare_response_format``: the only place the JSON adapter sets
  ``lm_kwargs["response_format"]``, before the LM call; ``CompactAdapter`` skips it for
  unstructured decoding (the raw text is then matched against the labels).
"""

_START = _private("dspy.adapters.types.base_type", "CUSTOM_TYPE_START_IDENTIFIER")
_END = _private("dspy.adapters.types.base_type", "CUSTOM_TYPE_END_IDENTIFIER")


def custom_type_parts(value: str) -> list[dict[str, Any]] | None:
    """The content parts of a serialised DSPy custom type (``dspy.Image`` ...), else None.

    DSPy 3.4 serialises a custom type (``program.save``/``dump_state``, ReAnchor's decision
    requests) as its JSON content parts between reserved markers; an image is one ``image_url``
    part. ``datasets/images.serialized_image_url`` reads demo images back from saved artifacts
    and ReAnchor's requests with it.
    """
    if not (value.startswith(_START) and value.endswith(_END)):
        return None
    return json.loads(value[len(_START) : -len(_END)])


# ─── decisions ─────────────────────────────────────────────────────────────────────────────────

_DecisionState = _private("dspy.adapters.decision_state", "DecisionState")


def choice_decision(
    signature: type[dspy.Signature], field: str, probabilities: Mapping[str, float], weights: Mapping[str, float]
) -> str:
    """The label DSPy's Choice decoding picks: ``argmax_k weights[k] * p_k``, ties to the unweighted winner.

    ``programs/decision.weighted_label`` decides with it, so a frozen program decides exactly as
    ReAnchor scored the weights (DSPy exposes the rule only on its private ``DecisionState``).
    """
    state = _DecisionState(signature, {field: {"weights": dict(weights)}})
    evidence = {"probabilities": dict(probabilities), "confidence": max(probabilities.values())}
    return state._decode({field: evidence})[field]


# ─── optimizers ────────────────────────────────────────────────────────────────────────────────

OPTIMIZER_HOOKS: dict[str, tuple[type, tuple[str, ...]]] = {
    "_propose_instructions": (dspy.MIPROv2, ("program", "trainset", "demo_candidates")),
}
"""Private optimizer methods ``optimizers/mipro.ImageMIPROv2`` overrides.

``MIPROv2._propose_instructions`` is step 2 of ``compile``: it returns ``{predictor index:
[instruction, ...]}``, the instruction candidates the Optuna study then indexes as
``"{i}_predictor_instruction"``; the override adds the config's instructions and survives a
prompt model that cannot write.
"""


InstructionProposer = _private("dspy.teleprompt.gepa", "InstructionProposer")
"""GEPA's default instruction proposer (DSPy 3.4.1, exported by ``dspy.teleprompt.gepa`` only).

``optimizers/gepa_task`` passes it to ``dspy.GEPA`` explicitly (and wraps it for a text-only
reflection model): called as ``proposer(candidate=..., reflective_dataset=...,
components_to_update=[...])`` it asks the LM in context for one new instruction per component,
sending each ``dspy.Image`` of the reflective examples as image content.
"""


def input_keys(example: dspy.Example) -> list[str] | None:
    """The input keys set by ``with_inputs`` (sorted), None when never set (a bootstrapped demo).

    ``optimizers/trial_program`` stores a demo's input keys and rebuilds it with
    ``with_inputs``; DSPy exposes them only as ``Example._input_keys`` (``inputs()`` raises when
    unset and drops keys the example does not hold).
    """
    return sorted(example._input_keys) if example._input_keys is not None else None


@dataclass(frozen=True)
class MiproTrial:
    """One evaluation in MIPROv2's trial log: a full-val or a minibatch score of one candidate program."""

    trial: int
    scope: str  # "full" or "minibatch"
    score: float  # 0-1
    program: dspy.Module
    instruction_index: int
    demo_set_index: int | None


_SCOPES = {"full_eval": "full", "mb": "minibatch"}


def mipro_trials(program: dspy.Module) -> list[MiproTrial]:
    """The trial log MIPROv2 attaches to its best program, in trial order (empty if none).

    DSPy (``track_stats`` on, the default) sets ``best.trial_logs = {trial: {...}}`` with
    ``full_eval_score``/``full_eval_program`` and ``mb_score``/``mb_program``, scores in percent
    as Evaluate reports them, and the chosen ``0_predictor_instruction``/``0_predictor_demos``
    indices (absent for the default program, trial 1). ``optimizers/mipro.trial_history``
    turns it into the run's JSON rows.
    """
    trials = []
    for trial, log in sorted((getattr(program, "trial_logs", None) or {}).items()):
        for key, scope in _SCOPES.items():
            score, candidate = log.get(f"{key}_score"), log.get(f"{key}_program")
            if score is None or candidate is None:
                continue
            trials.append(MiproTrial(trial, scope, float(score) / 100.0, candidate,
                                     log.get("0_predictor_instruction", 0), log.get("0_predictor_demos")))
    return trials


def mipro_best_score(program: dspy.Module) -> float:
    """MIPROv2's full-val score of the program it returned (``best.score``, percent), as 0-1."""
    return float(program.score) / 100.0


def record_in_trace(predictor: dspy.Predict, inputs: dict[str, Any], prediction: dspy.Prediction) -> None:
    """Append ``(predictor, inputs, prediction)`` to the running trace, as ``dspy.Predict`` does for an answer.

    ``programs/classify.Classify`` turns an unparseable answer into an invalid prediction instead of
    raising, so DSPy's predictor never traces it; recorded here, GEPA's reflective dataset holds the
    invalid answer (and its raw text) with its feedback. DSPy keeps the trace as the undocumented
    list ``dspy.settings.trace`` (None outside compiling), capped at ``max_trace_size``.
    """
    trace = dspy.settings.trace
    if trace is None or dspy.settings.max_trace_size <= 0:
        return
    if len(trace) >= dspy.settings.max_trace_size:
        trace.pop(0)
    trace.append((predictor, dict(inputs), prediction))


# ─── settings ──────────────────────────────────────────────────────────────────────────────────

UNTRACKED_SETTINGS = {"usage_tracker": None, "disable_history": True}
"""Undocumented ``dspy.settings`` keys: no usage tracker, no history entry for an LM call."""


def untracked():
    """A settings context whose LM calls add neither usage nor history.

    ``serving/vllm_probabilities`` runs its inner generation call under it: that call is the
    engine's own business, its usage and history belong to the outer ``dspy.LM``.
    """
    return dspy.settings.context(**UNTRACKED_SETTINGS)


def without_history(**settings):
    """A settings context (``settings`` too, e.g. ``lm=``) whose LM calls add no history entry.

    Predict's workers run under it: DSPy otherwise keeps the last calls, images included, in memory,
    which a run over a million images cannot afford.
    """
    return dspy.settings.context(disable_history=True, **settings)


# ─── resolved at import: a DSPy without these fails here, once ────────────────────────────────

def _require_internals() -> None:
    for name, (cls, params) in {**ADAPTER_HOOKS, **OPTIMIZER_HOOKS}.items():
        require_method(cls, name, params)
    require_method(_DecisionState, "_decode", ("answers",))
    if "_input_keys" not in vars(dspy.Example()):
        raise DSPyCompatError("dspy.Example._input_keys")
    if not {"trace", "max_trace_size"} <= dspy.settings.config.keys():
        raise DSPyCompatError("dspy.settings keys ['max_trace_size', 'trace']")
    if not UNTRACKED_SETTINGS.keys() <= dspy.settings.config.keys():
        raise DSPyCompatError(f"dspy.settings keys {sorted(UNTRACKED_SETTINGS)}")


_require_internals()
