"""Label probabilities for the classifier case: score every label, in one batched forward pass.

When a request's schema has a single enum field (``{"label": "cat" | "dog" | ...}``), the model's
distribution over the labels is measurable: the log-probability of each complete answer
``{"label":"cat"}`` (compact JSON, as the grammar would write it), summed over the tokens after
the prefix all answers share, then a softmax over the labels. Each request's prompt (images and
all) runs once; every label's answer is scored on top of its cached prefix (see
:func:`score_candidates`).
The engine answers with the most likely label, so the answer and its confidence agree.

Where the distribution goes (DSPy 3.4.1), and why:

* In the ``Response``: the answer is an lm15 ``DataPart`` with ``probabilities={field: {label: p}}``
  and ``method="candidate_sequence_likelihood"`` — lm15's own carrier for measured judgments.
  Direct ``lm(Request)`` callers, the DSPy cache record and ``lm.history[i]["response"]`` see it.
* In the ``dspy.Prediction``: DSPy keeps only the answer text and ``logprobs`` of an engine's
  output. When the LM asks for log-probs (``dspy.LM(..., logprobs=True)``, which ``create_lm``
  sets), ``Response.logprobs`` holds one entry for the label decision: the chosen label with its
  log-probability, and every label as a ranked alternative. ``pred.logprobs`` carries it, through
  threads and the cache; ``vlmopt.programs.confidence.prediction_probabilities`` reads it back
  (a program needs no torch to read it).
* Not ``dspy.experimental.Choice``: it rewrites the output to ``{"label": {"probabilities": {...},
  "confidence": ...}}`` for the model to *write* (verbalized numbers, not measured) and moves
  demos into the instruction text as JSON, images as base64 strings — unusable for image demos.

Example::

    pred = dspy.Predict(sig)(image=img)          # lm from create_lm(...)
    prediction_probabilities(pred)               # programs.confidence: {"cat": 0.71, "dog": 0.2, "bird": 0.09}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from dspy.lm15 import DataPart, Response, TokenLogprob, TopLogprob

from vlmopt._dspy_compat import judgments_in_schema, normalize_logprobs
from vlmopt.serving.families import GENERIC, ModelFamily, answer_position_ids
from vlmopt.serving.grammar import SEPARATORS

METHOD = "candidate_sequence_likelihood"
"""lm15's name for a distribution measured by scoring each candidate answer sequence."""


@dataclass(frozen=True)
class ClassifierField:
    """The single enum field of a classifier schema, with its labels in schema order."""

    name: str
    labels: tuple[str, ...]

    def answer_text(self, label: str) -> str:
        """The answer exactly as constrained decoding writes it."""
        return json.dumps({self.name: label}, separators=SEPARATORS, ensure_ascii=False)


def classifier_field(response_format: Mapping[str, Any] | None) -> ClassifierField | None:
    """The field to score when the schema is one string-enum property (the classifier case)."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    schema = response_format.get("schema")
    if not isinstance(schema, dict) or len(schema.get("properties") or {}) != 1:
        return None
    found = judgments_in_schema(schema)
    if len(found) != 1:
        return None
    (judgment,) = found.values()
    if judgment.kind != "choice" or len(judgment.keys) < 2:
        return None
    return ClassifierField(judgment.name, judgment.keys)


@dataclass(frozen=True)
class Candidates:
    """Token ids of each label's full answer, and how many leading tokens all answers share."""

    tokens: tuple[tuple[int, ...], ...]
    shared: int


def candidate_tokens(tokenizer, field: ClassifierField) -> Candidates:
    """Tokenize each complete answer on its own (merges across the label boundary stay honest)."""
    tokens = tuple(tuple(tokenizer.encode(field.answer_text(label), add_special_tokens=False))
                   for label in field.labels)
    shared = 0
    while all(len(t) > shared + 1 and t[shared] == tokens[0][shared] for t in tokens):
        shared += 1
    return Candidates(tokens, shared)


@torch.inference_mode()
def score_candidates(model, prompt_inputs: Mapping[str, torch.Tensor], candidates: Sequence[Candidates], *,
                     pad_token_id: int, family: ModelFamily = GENERIC) -> list[list[float]]:
    """Summed log-probs of every candidate continuation of every prompt; each prompt runs ONCE.

    ``prompt_inputs`` is the processor's left-padded batch, one row per request (input ids,
    attention mask, pixel values ...). The prompts go through the model once, images and all,
    keeping the cache; :func:`score_on_cache` scores the labels on top of it.
    """
    prompt_inputs = dict(prompt_inputs)
    prefill = model(**prompt_inputs, use_cache=True, logits_to_keep=1)
    has_images = any(prompt_inputs.get(key) is not None for key in ("image_grid_thw", "video_grid_thw"))
    deltas = getattr(getattr(model, "model", model), "rope_deltas", None) if has_images else None
    return score_on_cache(model, prefill.logits[:, -1, :], prefill.cache, prompt_inputs["attention_mask"], candidates,
                          pad_token_id=pad_token_id, family=family, rope_deltas=deltas)


@torch.inference_mode()
def score_on_cache(model, last_logits: torch.Tensor, cache, prompt_mask: torch.Tensor,
                   candidates: Sequence[Candidates], *, pad_token_id: int, family: ModelFamily = GENERIC,
                   rope_deltas: torch.Tensor | None = None) -> list[list[float]]:
    """Score every label's answer on top of prompts already in ``cache`` (one row per prompt).

    ``last_logits`` are each prompt's last logits (they predict every answer's first token). The
    cache is repeated per label (``Cache.reorder_cache``: attention keys/values and LFM2's conv
    states alike) and all labels' answers, right-padded, run as one short continuation: 3 labels
    cost one prefill plus a few answer tokens, not 3 prefills. Positions continue as they would in
    one unsplit forward (``families.answer_position_ids``; ``rope_deltas``: the M-RoPE offsets of
    prompts with images, None for text-only prompts).
    """
    device = prompt_mask.device
    first = last_logits.float().log_softmax(-1)
    rows = [(request, tokens) for request, cands in enumerate(candidates) for tokens in cands.tokens]
    owner = torch.tensor([request for request, _ in rows], device=device)
    cache.reorder_cache(owner)  # row r of the answers continues request owner[r]
    width = max(len(tokens) for _, tokens in rows)
    answer_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    answer_mask = torch.zeros((len(rows), width), dtype=prompt_mask.dtype)
    for row, (_, tokens) in enumerate(rows):
        answer_ids[row, :len(tokens)] = torch.tensor(tokens)
        answer_mask[row, :len(tokens)] = 1
    answer_ids = answer_ids.to(device)
    full_mask = torch.cat([prompt_mask.index_select(0, owner), answer_mask.to(device)], dim=1)
    positions = answer_position_ids(family, full_mask, width, owner, rope_deltas)
    output = model(input_ids=answer_ids, cache=cache, use_cache=True, attention_mask=full_mask,
                   **({"position_ids": positions} if positions is not None else {}))
    # answer token 0 is predicted by its prompt's last logits, token t > 0 by answer position t - 1
    first = first.index_select(0, owner).gather(-1, answer_ids[:, :1]).squeeze(-1).tolist()
    later = output.logits[:, :-1].float().log_softmax(-1).gather(-1, answer_ids[:, 1:, None]).squeeze(-1).tolist()
    scores: list[list[float]] = [[] for _ in candidates]
    for row, (request, tokens) in enumerate(rows):
        picked = [first[row], *later[row]]
        scores[request].append(sum(picked[t] for t in range(candidates[request].shared, len(tokens))))
    return scores


def distribution(field: ClassifierField, scores: Sequence[float]) -> dict[str, float]:
    """Softmax of the summed label log-probs: the model's distribution over the labels."""
    return normalize_logprobs(dict(zip(field.labels, scores, strict=True)))


def answer_part(field: ClassifierField, label: str, probabilities: Mapping[str, float]) -> DataPart:
    """The classifier answer as lm15's measured-judgment DataPart."""
    return DataPart(value={field.name: label}, probabilities={field.name: dict(probabilities)}, method=METHOD)


def decision_logprobs(label: str, probabilities: Mapping[str, float]) -> tuple[TokenLogprob, ...]:
    """One log-prob entry for the label decision, every label ranked as an alternative."""
    ranked = sorted(probabilities.items(), key=lambda item: -item[1])
    top = tuple(TopLogprob(token=name, logprob=_log(p)) for name, p in ranked)
    return (TokenLogprob(token=label, logprob=_log(probabilities[label]), top=top),)


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -1e30


def response_probabilities(response: Response) -> dict[str, dict[str, float]] | None:
    """``{field: {label: p}}`` from a Response's measured DataPart, if the engine attached one."""
    for part in response.message.parts:
        if isinstance(part, DataPart) and part.probabilities is not None:
            return part.probabilities
    return None
