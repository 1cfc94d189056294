"""Label probabilities from a vLLM server, measured as the in-process engine measures them.

For a single-label classifier request (``response_format`` = one string-enum field) the label
distribution is lm15's ``candidate_sequence_likelihood``, exactly the quantity
``vlmopt.serving.label_scoring`` computes in-process: for every label, the summed log-probability
of its complete compact answer ``{"label":"cat"}`` over the tokens after the prefix all answers
share, then a softmax over the labels. Same quantity on both backends, so a confidence means the
same thing whichever backend produced it.

How, per prediction:

1. The generation request goes to the server unchanged: the *answer* is what the server
   generates, so an exported request replayed by an app gets the same label.
2. One extra request per label: the same messages plus the label's answer as a prefilled assistant
   turn (``continue_final_message``), ``prompt_logprobs=0``, ``max_tokens=1``. vLLM returns the
   log-prob of every prompt token; the answer's label tokens (ids from the server's ``/tokenize``,
   checked against the prompt's last tokens) are summed. The requests go out together, so vLLM
   batches them.

The scoring requests go through one ``openai.OpenAI`` client per engine (thread-safe, one
connection pool, typed errors, its retries with backoff for connection errors, 408/409/429 and
5xx), their failures mapped onto the lm15 errors DSPy knows (``TransportError`` / ``ServerError``
are transient to DSPy, which then retries the whole call; ``ProviderError`` is not). They run on
one executor per engine rather than a thread pool per prediction: its threads start once, and the
engine's scoring requests in flight stay bounded (``SCORING_WORKERS``) whatever DSPy's
``num_threads``. Not the async client: DSPy calls ``complete`` from plain threads, and an
``AsyncOpenAI`` client's connections belong to the event loop it first ran on, so each call would
need a loop and a client of its own.
3. The Response carries the distribution the way the in-process engine's does: a ``DataPart`` with
   ``probabilities`` and one decision entry in ``logprobs`` (``label_scoring.decision_logprobs``),
   so ``programs.confidence.prediction_probabilities(pred)`` reads both backends alike.

Why not the generation's own ``top_logprobs`` at the first label token: under structured outputs
vLLM applies the grammar mask *before* it computes log-probs (whatever ``--logprobs-mode``), so
they come back renormalised over what the grammar allows at that step; and the grammar lets the
model spell the JSON in any tokenisation (the tiny Idefics3 writes ``la``+``bel``, ``"``+``:`` and
is offered label prefixes such as ``c`` and ``s`` next to ``circle``). That is neither a
distribution over the labels nor comparable with the in-process scorer.

Known limits:

* The prefilled answer is rendered by the chat template as an assistant *message*. ChatML
  templates (LFM2-VL, Qwen2-VL) open a message exactly as they open the generation prompt, so the
  answer is scored in the generation context. SmolVLM/Idefics3 writes ``Assistant: `` before a
  message but ``Assistant:`` as the generation prompt: there the answer is scored after one extra
  space token (measured on the tiny Idefics3: |p_vllm - p_in_process| <= 0.003).
* Cost: one full prefill per label. vLLM does not read the prefix cache for requests that ask
  for ``prompt_logprobs`` (every prompt position needs its logits). Measured (bench P7, 65 M
  Idefics3, 3 labels, CPU): 2.7 images/s with probabilities vs 6.2 without. The prediction's
  token usage is the generation request's; the scoring requests are not counted in it.

Example::

    lm = create_vllm_lm(server.base_url, "tiny-idefics3")
    with dspy.context(lm=lm):
        pred = program(image=image)
    label_confidence(pred)        # ({"circle": 0.30, "square": 0.37, "triangle": 0.33}, 0.37)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TypeVar

import dspy
import openai
from dspy.lm15 import DataPart, Message, ProviderError, Request, Response, ServerError, TransportError

from vlmopt._dspy_compat import openai_chat_messages, untracked
from vlmopt.serving import label_scoring
from vlmopt.serving.openai_lm import PROVIDER, create_openai_lm

MODEL_PREFIX = f"{PROVIDER}+labels"
"""Model-string prefix of the LMs built here: DSPy's cache keys on the model string, and a cached
answer without probabilities (plain ``create_openai_lm``) must not answer a call that wants them."""

SCORING_WORKERS = 64
"""Scoring requests one engine keeps in flight (a label's request each); vLLM batches them."""

T = TypeVar("T")


class ServerTokenizer:
    """``encode`` through the server's ``/tokenize``: the exact token ids the server will see."""

    def __init__(self, client: openai.OpenAI, model: str):
        self._client = client
        self._model = model
        self._url = f"{str(client.base_url).rstrip('/').removesuffix('/v1')}/tokenize"  # vLLM serves it beside /v1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {"model": self._model, "prompt": text, "add_special_tokens": add_special_tokens}
        return _call(self._url, lambda: self._client.post(self._url, cast_to=object, body=body))["tokens"]


class LabelProbabilityEngine:
    """A DSPy engine: generation through ``create_openai_lm``, label probabilities added (see module doc).

    Requests that are not a single-label classifier, or that do not ask for log-probs, pass through
    untouched. Thread-safe: DSPy's threads share it, as they share the server.
    """

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = True
    supported_params = {"temperature", "max_tokens", "top_p", "seed", "stop", "logprobs", "top_logprobs",
                        "response_format"}

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout: float = 120.0,
                 num_retries: int = 3):
        self.settings = {"base_url": base_url, "model": model, "api_key_env": api_key_env, "timeout": timeout,
                         "num_retries": num_retries}
        self.base_url = base_url.rstrip("/")
        self.model = model
        # DSPy owns the generation request's retries (the outer LM's num_retries): one attempt here.
        self._generate = create_openai_lm(base_url, model, api_key_env=api_key_env, timeout=timeout,
                                          num_retries=0, cache=False)
        # A scoring request is retried alone (one label's request is cheaper than the whole call).
        api_key = os.environ[api_key_env] if api_key_env else "EMPTY"  # never OPENAI_API_KEY: not for this server
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=num_retries)
        self._scoring = ThreadPoolExecutor(max_workers=SCORING_WORKERS, thread_name_prefix="vlmopt-label-scoring")
        self._tokenizer = ServerTokenizer(self._client, model)
        self._candidates: dict[label_scoring.ClassifierField, label_scoring.Candidates] = {}
        self._candidates_lock = threading.Lock()  # DSPy's threads share the memo: tokenize each field once

    def complete(self, request: Request) -> Response:
        # The inner call is this engine's business: its usage and history belong to the outer LM.
        with untracked():
            response = self._generate(replace(request, model=self._generate.model))
        field = label_scoring.classifier_field(request.config.response_format)
        label = _answer(response, field) if field is not None and request.config.logprobs is not None else None
        if label is None:
            return response
        probabilities = self.label_probabilities(request, field)
        return replace(response, message=Message.assistant([label_scoring.answer_part(field, label, probabilities)]),
                       logprobs=label_scoring.decision_logprobs(label, probabilities))

    def label_probabilities(self, request: Request, field: label_scoring.ClassifierField) -> dict[str, float]:
        """label -> probability for this request's messages (one scoring request per label)."""
        candidates = self._candidate_tokens(field)
        messages = openai_chat_messages(request)
        scores = list(self._scoring.map(lambda i: self._score(messages, field, candidates, i),
                                        range(len(field.labels))))
        return label_scoring.distribution(field, scores)

    def _score(self, messages: list[dict], field: label_scoring.ClassifierField,
               candidates: label_scoring.Candidates, index: int) -> float:
        """Summed log-prob of label ``index``'s tokens after the shared answer prefix."""
        label = field.labels[index]
        url = f"{self.base_url}/chat/completions"
        completion = _call(url, lambda: self._client.chat.completions.create(
            model=self.model,
            messages=[*messages, {"role": "assistant", "content": field.answer_text(label)}],
            max_tokens=1,
            temperature=0.0,
            extra_body={"add_generation_prompt": False, "continue_final_message": True, "prompt_logprobs": 0},
        ))
        prompt_logprobs = (completion.model_extra or {}).get("prompt_logprobs")
        if prompt_logprobs is None:
            raise ProviderError(f"{url}: the answer carries no prompt_logprobs; label probabilities need a vLLM "
                                "server (or set backend.label_probabilities: false)", provider=PROVIDER)
        scored = candidates.tokens[index][candidates.shared:]
        tail = prompt_logprobs[-len(scored):]
        if any(entry is None or str(token) not in entry for token, entry in zip(scored, tail, strict=True)):
            raise ProviderError(
                f"{self.base_url}: the answer for label {label!r} tokenizes differently inside the chat "
                "template than on its own, so its probability cannot be read from the prompt log-probs",
                provider=PROVIDER)
        return sum(entry[str(token)]["logprob"] for token, entry in zip(scored, tail, strict=True))

    def _candidate_tokens(self, field: label_scoring.ClassifierField) -> label_scoring.Candidates:
        with self._candidates_lock:
            if field not in self._candidates:
                self._candidates[field] = label_scoring.candidate_tokens(self._tokenizer, field)
            return self._candidates[field]

    def close(self) -> None:
        """Finish the scoring requests in flight, then release the executor, the client and the inner LM."""
        self._scoring.shutdown()
        self._client.close()
        self._generate.close()

    def dump_state(self) -> dict:
        """JSON settings that rebuild this engine (``dspy.LM.save`` stores them; never the key itself)."""
        return dict(self.settings)

    @classmethod
    def load_state(cls, state: dict) -> LabelProbabilityEngine:
        return cls(**state)


def _answer(response: Response, field: label_scoring.ClassifierField) -> str | None:
    """The label the server generated (lm15 folds an enum answer into a DataPart), if it is one."""
    for part in response.message.parts:
        if isinstance(part, DataPart) and isinstance(part.value, dict):
            value = part.value.get(field.name)
            return value if value in field.labels else None
    try:
        value = json.loads(response.message.text or "").get(field.name)
    except (json.JSONDecodeError, AttributeError):
        return None
    return value if value in field.labels else None


def _call(url: str, request: Callable[[], T]) -> T:
    """One client call (after its retries); openai's errors become lm15 errors naming the URL."""
    try:
        return request()
    except openai.APITimeoutError as exc:
        raise TransportError(f"{url}: timed out ({exc})", provider=PROVIDER) from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__ or exc
        raise TransportError(f"{url}: {type(cause).__name__}: {cause}", provider=PROVIDER) from exc
    except openai.APIStatusError as exc:
        error = ServerError if exc.status_code >= 500 else ProviderError
        raise error(f"{url}: HTTP {exc.status_code}: {exc.response.text[:500]}", provider=PROVIDER,
                    status=exc.status_code) from exc


def create_vllm_lm(
    base_url: str,
    model: str,
    *,
    api_key_env: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 256,
    timeout: float = 120.0,
    num_retries: int = 3,
    cache: bool = True,
) -> dspy.LM:
    """``create_openai_lm`` plus measured label probabilities for single-label classifiers.

    Arguments as in ``create_openai_lm``; log-probs are always on (they are what carries the
    distribution). Other requests (multi-label, multi-field, free text) are answered as by
    ``create_openai_lm``. An unset ``api_key_env`` fails as there: the engine builds its
    generating LM with it first.
    """
    engine = LabelProbabilityEngine(base_url, model, api_key_env=api_key_env, timeout=timeout, num_retries=num_retries)
    return dspy.LM(f"{MODEL_PREFIX}/{model}", engine=engine, temperature=temperature, max_tokens=max_tokens,
                   num_retries=num_retries, logprobs=True, cache=cache)


__all__ = ["LabelProbabilityEngine", "ServerTokenizer", "create_vllm_lm"]
