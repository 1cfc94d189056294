"""What an app needs to replay a frozen classifier without DSPy.

``openai-request`` is a chat-completions body template: the artifact's rendered messages (demo
images inline), its ``response_format`` and generation settings, with the query image left as
the ``{image}`` slot. An app fills the slot with a data URI and POSTs it to any
OpenAI-compatible server (vLLM) — the same messages the DSPy program sends, so the same answers.

A calibrated artifact (its ``decision`` holds ReAnchor's per-label weights) decides on the
measured label distribution, which a plain chat completion does not return: ``prompt-json``
carries the weights and the rule, and :func:`decision_caveat` says so for ``openai-request``.

Example::

    body = fill_image(export_request(load_artifact("artifact.json")), "data:image/jpeg;base64,...")
    httpx.post(f"{base_url}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
"""

from __future__ import annotations

import json
from typing import Any

from vlmopt.artifacts import IMAGE_SLOT, FrozenProgram

FORMATS = ("openai-request", "prompt-json")


def export_request(frozen: FrozenProgram, model_name: str | None = None) -> dict[str, Any]:
    """A chat-completions request body with the ``{image}`` slot (see the module docstring)."""
    prompt, gen = frozen.artifact.prompt, frozen.artifact.generation
    body: dict[str, Any] = {
        "model": model_name or frozen.model_id,
        "messages": prompt.messages,
        "temperature": gen.temperature,
        "max_tokens": gen.max_new_tokens,
    }
    if prompt.response_format:
        body["response_format"] = prompt.response_format
    return body


def export_prompt(frozen: FrozenProgram) -> dict[str, Any]:
    """The portable prompt with its task and generation settings, for apps that build their own calls."""
    content = frozen.artifact.content()
    return {
        **{key: content[key] for key in ("task", "model", "generation", "prompt", "decision")},
        "artifact_sha256": content["sha256"],
    }


def export(frozen: FrozenProgram, fmt: str, model_name: str | None = None) -> dict[str, Any]:
    if fmt == "openai-request":
        return export_request(frozen, model_name)
    if fmt == "prompt-json":
        return export_prompt(frozen)
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


def decision_caveat(frozen: FrozenProgram) -> str | None:
    """Why a chat-completions replay of a calibrated artifact can differ from the program, or None."""
    decision = frozen.artifact.decision
    if not decision:
        return None
    return (
        f"this artifact's label decision is calibrated (weights {decision.weights}): a plain chat completion "
        "returns the uncalibrated label. Apply the rule in `--format prompt-json` (decision) to the label "
        "probabilities, or use `vlmopt predict`, to reproduce the program."
    )


def fill_image(body: dict[str, Any], image_url: str) -> dict[str, Any]:
    """A copy of a request template with the query image slot filled (what an app does per image)."""
    text = json.dumps(body, ensure_ascii=False)
    slot = json.dumps(IMAGE_SLOT)[1:-1]
    if text.count(slot) != 1:
        raise ValueError(f"the request template must hold exactly one {IMAGE_SLOT} slot")
    return json.loads(text.replace(slot, json.dumps(image_url)[1:-1]))


__all__ = ["FORMATS", "decision_caveat", "export", "export_prompt", "export_request", "fill_image"]
