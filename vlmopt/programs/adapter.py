"""The compact adapter: the instruction, the demos and the image — nothing else.

DSPy's Chat and JSON adapters open with a long system prompt describing every field, which small
VLMs misread (measured: a model that answers 10/10 with a plain prompt scored 2/10 under it). The
compact adapter sends:

* system: the signature's instructions (what MIPROv2 rewrites);
* per demo: a user turn (the image field's description, then the image) and an assistant turn
  with the answer — compact JSON when decoding is structured, the bare label otherwise;
* the query as the last user turn, in the same form.

Instructions and demos come before the query image, so servers with prefix caching reuse them.
With structured generation the output schema goes out as ``response_format`` and the backend's
grammar enforces it; without it the raw text is matched against the label set (see ``labels.py``)
and anything else is an invalid answer, never a silent mapping.
"""

from __future__ import annotations

import json
from typing import Any, get_args, get_origin

from dspy import AdapterParseError, ChatAdapter, JSONAdapter, Signature

from vlmopt._dspy_compat import format_field_value, serialize_for_json
from vlmopt.programs.labels import match_label

__all__ = ["CompactAdapter", "RawChatAdapter", "RawJSONAdapter", "create_adapter"]

RAW_KEY = "raw_output"
NORMALIZED_KEY = "label_normalized"


def compact_json(value: Any) -> str:
    """JSON with no optional whitespace: the exact form the grammar lets the model write."""
    return json.dumps(serialize_for_json(value), separators=(",", ":"), ensure_ascii=False)


class KeepRawOutput:
    """Adapter mixin: every parsed answer also carries the model's raw text (for the run's records).

    DSPy keeps only the signature's fields of what ``parse`` returns, so the text is attached after
    post-processing, next to the ``logprobs`` DSPy attaches there too. ``_call_postprocess`` is a
    private DSPy hook, checked at import by ``vlmopt._dspy_compat.ADAPTER_HOOKS``.
    """

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
        try:
            values = super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)
        except AdapterParseError as err:
            # An empty answer (the model wrote only special tokens) is reported by DSPy with the whole
            # output's repr (text plus per-token log-probs); the record keeps the text, which is "".
            if len(outputs) == 1 and isinstance(outputs[0], dict) and not outputs[0].get("text"):
                err.lm_response = ""
            raise
        for value, output in zip(values, outputs, strict=True):
            value[RAW_KEY] = output.get("text") if isinstance(output, dict) else output
        return values


class RawChatAdapter(KeepRawOutput, ChatAdapter):
    """DSPy's ChatAdapter, keeping raw text and never retrying through JSON (a retry would hide invalids)."""

    def __init__(self):
        super().__init__(use_json_adapter_fallback=False)


class RawJSONAdapter(KeepRawOutput, JSONAdapter):
    """DSPy's JSONAdapter (schema sent as ``response_format``), keeping raw text."""

    def __init__(self):
        super().__init__(use_native_function_calling=False)


class CompactAdapter(KeepRawOutput, JSONAdapter):
    """Minimal chat framing for small VLMs; see the module docstring."""

    def __init__(self, structured: bool = True, normalize_labels: bool = False):
        super().__init__(use_native_function_calling=False)
        self.structured = structured
        self.normalize_labels = normalize_labels

    def _prepare_response_format(self, lm, lm_kwargs, signature):
        """The schema goes out only for structured decoding (a private DSPy hook: ``_dspy_compat.ADAPTER_HOOKS``)."""
        if self.structured:
            super()._prepare_response_format(lm, lm_kwargs, signature)

    def _bare_answers(self, signature: type[Signature]) -> bool:
        """Free text is only unambiguous for a single answer field."""
        return not self.structured and len(signature.output_fields) == 1

    def format_system_message(self, signature: type[Signature]) -> str:
        return signature.instructions

    def format_user_message_content(
        self,
        signature: type[Signature],
        inputs: dict[str, Any],
        prefix: str = "",
        suffix: str = "",
        main_request: bool = False,
    ) -> str:
        parts = []
        for name, field in signature.input_fields.items():
            if name in inputs:
                desc = (field.json_schema_extra or {}).get("desc", "")
                parts.append(f"{desc}\n{format_field_value(field_info=field, value=inputs[name])}".strip())
        return "\n\n".join(parts)

    def format_assistant_message_content(
        self,
        signature: type[Signature],
        outputs: dict[str, Any],
        missing_field_message: str | None = None,
    ) -> str:
        answer = {name: outputs.get(name, missing_field_message) for name in signature.output_fields}
        if self._bare_answers(signature):
            (value,) = answer.values()
            return ", ".join(value) if isinstance(value, list) else str(value)
        return compact_json(answer)

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        if not self._bare_answers(signature):
            return super().parse(signature, completion)
        name, labels, texts, is_list = self._bare_parts(signature, completion)
        matched = [match_label(text, labels, normalize=self.normalize_labels)[0] for text in texts]
        if None in matched:
            raise AdapterParseError(
                adapter_name=type(self).__name__,
                signature=signature,
                lm_response=completion,
                message=f"answer is not one of the labels {labels}",
            )
        return {name: matched if is_list else matched[0]}

    def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
        values = super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)
        for value in values:
            value[NORMALIZED_KEY] = self._bare_answers(processed_signature) and not self._exact(
                processed_signature, value[RAW_KEY]
            )
        return values

    @staticmethod
    def _bare_parts(signature: type[Signature], completion: str) -> tuple[str, list[str], list[str], bool]:
        """(field name, its labels, the answer texts, is a list): a list answer is split on commas."""
        ((name, field),) = signature.output_fields.items()
        is_list = get_origin(field.annotation) is list
        labels = list(get_args(get_args(field.annotation)[0] if is_list else field.annotation))
        return name, labels, completion.split(",") if is_list else [completion], is_list

    def _exact(self, signature: type[Signature], completion: str) -> bool:
        _, labels, texts, _ = self._bare_parts(signature, completion)
        return all(match_label(text, labels)[0] is not None for text in texts)


def create_adapter(kind: str, *, structured: bool, normalize_labels: bool = False) -> JSONAdapter | ChatAdapter:
    """The adapter a task config asks for: ``compact``, or ``dspy`` (JSON when structured, else Chat)."""
    if kind == "compact":
        return CompactAdapter(structured=structured, normalize_labels=normalize_labels)
    if kind == "dspy":
        return RawJSONAdapter() if structured else RawChatAdapter()
    raise ValueError(f"unknown adapter {kind!r}; valid: compact, dspy")
