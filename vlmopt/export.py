"""What an app needs to replay a frozen classifier without DSPy.

``openai-request`` is a chat-completions body template: the artifact's rendered messages (demo
images inline), its ``response_format`` and generation settings, with the query image left as
the ``{image}`` slot. An app fills the slot with a data URI and POSTs it to any
OpenAI-compatible server (vLLM) — the same messages the DSPy program sends, so the same answers.

A calibrated artifact (its ``decision`` holds ReAnchor's per-label weights) decides on the
measured label distribution, which a plain chat completion does not return: ``prompt-json``
carries the weights and the rule, and :func:`decision_caveat` says so for ``openai-request``.

An **abstaining** artifact (``decision.abstain``) needs that distribution too: a plain chat
completion returns a label and no probabilities, so a replay of the request *never abstains*.
An app whose server returns log-probs applies the threshold itself (:data:`ABSTAIN_RULE`):

1. ``P(k)`` for every label ``k``: the probability of the answer ``{"label":"k"}`` under the
   prompt — the product of the label's token probabilities after the answer's ``{"label":"``
   prefix — normalised over the labels (what vlmopt's backends measure; on vLLM, one
   ``logprob_token_ids`` request per node of the labels' token trie). When every label's first
   token differs, ``P(k)`` is that token's probability at the label's position
   (``logprobs: true, top_logprobs: 20``), renormalised over the labels' first tokens.
2. With ReAnchor weights, ``P(k) := w_k P(k) / sum_j w_j P(j)`` (the distribution decided on).
3. ``confidence = max_k P(k)`` (``max_prob``) or ``P(top1) - P(top2)`` (``margin``), as
   ``decision.abstain.confidence`` says; answer iff ``confidence >= decision.abstain.threshold``,
   else abstain (the top label stays a suggestion). ``vlmopt predict`` writes these rows itself.

Example::

    body = fill_image(export_request(load_artifact("artifact.json")), "data:image/jpeg;base64,...")
    httpx.post(f"{base_url}/chat/completions", json=body).json()["choices"][0]["message"]["content"]
"""

from __future__ import annotations

import json
from typing import Any

from vlmopt.artifacts import IMAGE_SLOT, FrozenProgram

FORMATS = ("openai-request", "prompt-json")
ABSTAIN_RULE = (
    "P(k) = probability of the answer for label k under the prompt (the label's token probabilities after the "
    'answer\'s {"label":" prefix, multiplied), normalised over the labels; with decision weights, '
    "P(k) = w_k P(k) / sum_j w_j P(j); confidence = max_k P(k) (max_prob) or P(top1) - P(top2) (margin); "
    "answer iff confidence >= threshold, else abstain and keep the top label as a suggestion"
)


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
    """What a chat-completions replay cannot do that the program does (calibration, abstention), or None."""
    decision = frozen.artifact.decision
    if not decision:
        return None
    caveats = []
    if decision.weights:
        caveats.append(
            f"this artifact's label decision is calibrated (weights {decision.weights}): a plain chat completion "
            "returns the uncalibrated label. Apply the rule in `--format prompt-json` (decision) to the label "
            "probabilities, or use `vlmopt predict`, to reproduce the program."
        )
    if decision.abstain:
        rule = decision.abstain
        caveats.append(
            f"this artifact abstains when unsure ({rule.confidence} < {rule.threshold:.6g}): a plain chat completion "
            "returns no label probabilities, so a replay never abstains. With a server that returns log-probs, "
            f"apply `decision.abstain` from `--format prompt-json`: {ABSTAIN_RULE}; or use `vlmopt predict`."
        )
    return " ".join(caveats) or None


def fill_image(body: dict[str, Any], image_url: str) -> dict[str, Any]:
    """A copy of a request template with the query image slot filled (what an app does per image)."""
    text = json.dumps(body, ensure_ascii=False)
    slot = json.dumps(IMAGE_SLOT)[1:-1]
    if text.count(slot) != 1:
        raise ValueError(f"the request template must hold exactly one {IMAGE_SLOT} slot")
    return json.loads(text.replace(slot, json.dumps(image_url)[1:-1]))


__all__ = ["ABSTAIN_RULE", "FORMATS", "decision_caveat", "export", "export_prompt", "export_request", "fill_image"]
