"""A scripted writing model — a **test double at the model edge** for the prompt / reflection model.

GEPA reflects, SIMBA writes rules and MIPROv2 proposes instructions with a capable writing model
that cannot run here. This double stands where it would: it receives the real requests DSPy's
optimizers build (their signatures, the reflective examples with their feedback text and
images) through :class:`~vlmopt.testing.scripted_engine.ScriptedEngine`, records each one, and
answers the output fields the request asks for — JSON under a ``response_format`` (DSPy's
JSONAdapter, GEPA's proposer), DSPy's ``[[ ## field ## ]]`` chat format otherwise (SIMBA,
MIPROv2's proposer) — with the values a test's function writes. Everything above it is real.

Example::

    writer = ScriptedWriter(lambda call, fields: {f: GOOD if "confused" in call.text else "?" for f in fields})
    optimize_task(cfg, lm=task_lm, prompt_lm=writer.lm())
    assert any("confused" in call.text for call in writer.calls)
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import dspy

from vlmopt.testing.scripted_engine import ScriptedCall, ScriptedEngine, scripted_lm

_CHAT_OUTPUTS = re.compile(r"Your output fields are:\n(.*?)(?:\n\n|\Z)", re.S)
_FIELD = re.compile(r"^\d+\. `(\w+)`", re.M)


def call_text(call: ScriptedCall) -> str:
    """Everything the writer was shown as text: the system message and every turn."""
    return "\n".join([call.system, *(text for _, text, _ in call.turns)])


def output_fields(call: ScriptedCall) -> list[str]:
    """The output fields a DSPy request asks for: the json_schema's properties, else the chat adapter's list."""
    if call.response_format is not None:
        schema = call.response_format.get("json_schema", call.response_format).get("schema", {})
        return list(schema.get("properties", {}))
    listed = _CHAT_OUTPUTS.search(call.system)
    return _FIELD.findall(listed.group(1)) if listed else []


def format_answer(call: ScriptedCall, values: dict[str, Any]) -> str:
    """``values`` in the format the request asks for (JSON object, or DSPy's chat field markers)."""
    if call.response_format is not None:
        return json.dumps(values)
    parts = [
        f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}"
        for name, value in values.items()
    ]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


class ScriptedWriter:
    """Answers ``write(call, output_fields) -> {field: value}``; keeps every call in ``calls``."""

    def __init__(self, write: Callable[[ScriptedCall, list[str]], dict[str, Any]]):
        self.write = write
        self.calls: list[ScriptedCall] = []
        self._lock = threading.Lock()
        self.engine = ScriptedEngine(self._answer)

    def _answer(self, call: ScriptedCall) -> str:
        with self._lock:
            self.calls.append(call)
        return format_answer(call, self.write(call, output_fields(call)))

    def lm(self, name: str = "scripted-writer") -> dspy.LM:
        """The writer as a ``dspy.LM`` (no cache, so every request reaches the double)."""
        return scripted_lm(self.engine, name=name).copy(max_tokens=1024, logprobs=False)

    def texts(self) -> list[str]:
        return [call_text(call) for call in self.calls]
