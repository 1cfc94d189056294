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
2. The labels' answer tokens (ids from the server's ``/tokenize``) form a trie (``label_trie``).
   One scoring request per internal node: the same messages plus the node's answer prefix as a
   prefilled assistant turn (``continue_final_message``), ``max_tokens=1``, ``temperature=0``,
   ``logprobs`` with ``logprob_token_ids`` = the node's child tokens; each label's score is the
   sum of its edges. 3 one-token labels are 4 requests: the shared prefix ``{"label":"`` picks
   the label token, and each label's node gives its closing ``"}``. The requests of a prediction
   go out together, so vLLM batches them, and they read the prefix cache: what they share with
   the generation request (system, instruction, demos and their images, the query image) is not
   computed again, only the last partial KV block and the answer prefix.
   Honest tokenization: each response carries its prompt's token ids (``return_token_ids``), and
   a node whose prefilled text did not end in the node's tokens inside the chat template is a
   ``ProviderError``. A label whose trie path passes through a prefix that no text spells (a
   byte-level tokenizer splitting one character, as the tiny Idefics3 splits ``é``: the cut
   decodes to U+FFFD) is scored the old way instead, by one ``prompt_logprobs`` request for its
   whole answer; other labels keep the trie.
3. The Response carries the distribution the way the in-process engine's does: a ``DataPart`` with
   ``probabilities`` and one decision entry in ``logprobs`` (``label_scoring.decision_logprobs``),
   so ``programs.confidence.prediction_probabilities(pred)`` reads both backends alike.

Why not ``prompt_logprobs`` (one request per label, the answer's prompt log-probs summed; this
module's earlier method, still the fallback above): vLLM does not read the prefix cache for a
request that asks for them. vllm 0.32 ``vllm/sampling_params.py`` ``SamplingParams.__post_init__``
(line 622) sets ``skip_reading_prefix_cache = prompt_logprobs is not None or
prompt_logprob_token_ids is not None`` (a cache hit would leave the hit positions without
logits), and ``vllm/v1/core/kv_cache_manager.py`` ``prefix_cache_lookup_enabled`` (line 251)
then skips the lookup: every label was a full prefill, demo images and all (issue 14: 0.78 vs
7.3 images/s with 4 image demos). ``logprob_token_ids`` (``vllm/entrypoints/openai/
chat_completion/protocol.py`` line 295, passed to ``SamplingParams`` at line 766 with
``prompt_logprobs`` left unset, so the request reads the cache) asks for the log-probs of named
tokens at the generated position, computed by ``vllm/v1/sample/sampler.py`` ``Sampler.forward``
from the raw logits (the default ``--logprobs-mode raw_logprobs``, line 89) before the logits
processors, and gathered by id (``gather_specific_token_logprobs``, line 117).

Why not the generation's own ``top_logprobs`` at the first label token: under structured outputs
vLLM applies the grammar bitmask to the logits *before* the sampler computes log-probs (whatever
``--logprobs-mode``; ``vllm/v1/worker/gpu_model_runner.py`` line 4335, the CPU runner's base), so
they come back renormalised over what the grammar allows at that step (hence no
``response_format`` on scoring requests); and the grammar lets the model spell the JSON
in any tokenisation (the tiny Idefics3 writes ``la``+``bel``, ``"``+``:`` and is offered label
prefixes such as ``c`` and ``s`` next to ``circle``). That is neither a distribution over the
labels nor comparable with the in-process scorer.

The scoring requests go through one ``openai.OpenAI`` client per engine (thread-safe, one
connection pool, typed errors, its retries with backoff for connection errors, 408/409/429 and
5xx), their failures mapped onto the lm15 errors DSPy knows (``TransportError`` / ``ServerError``
are transient to DSPy, which then retries the whole call; ``ProviderError`` is not). They run on
one executor per engine rather than a thread pool per prediction: its threads start once, and the
engine's scoring requests in flight stay bounded (``SCORING_WORKERS``) whatever DSPy's
``num_threads``. Not the async client: DSPy calls ``complete`` from plain threads, and an
``AsyncOpenAI`` client's connections belong to the event loop it first ran on, so each call would
need a loop and a client of its own.

Known limits:

* The prefilled answer is rendered by the chat template as an assistant *message*. ChatML
  templates (LFM2-VL, Qwen2-VL) open a message exactly as they open the generation prompt, so the
  answer is scored in the generation context. SmolVLM/Idefics3 writes ``Assistant: `` before a
  message but ``Assistant:`` as the generation prompt: there every node is scored after one extra
  space token (measured on the tiny Idefics3: |p_vllm - p_in_process| <= 0.003).
* A server without ``logprob_token_ids`` and ``return_token_ids`` on chat completions (an older
  vLLM, another OpenAI-compatible server) is a one-line ``ProviderError`` naming the fix, not a
  silent fallback to ``prompt_logprobs``: that would make every prediction several times slower
  without a word.
* Cost: vLLM caches whole KV blocks, so each node request recomputes the prompt after the last
  full block of the generation's (the query image, when it sits there). Bench P10 (65 M Idefics3,
  3 labels, 4 image demos, CPU): with ``--block-size 32`` 1.33x the time of the answer alone
  (prompt_logprobs: 7.5x); at the CPU default of 128 the whole query part is recomputed per node
  and it is 3.1x (prompt_logprobs: 7.1x); GPU builds default to 16. The prediction's token usage
  is the generation request's; the scoring requests are not counted in it.

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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Literal, TypeVar

import dspy
import openai
from dspy.lm15 import DataPart, Message, ProviderError, Request, Response, ServerError, TransportError

from vlmopt._dspy_compat import openai_chat_messages, untracked
from vlmopt.serving import label_scoring
from vlmopt.serving.label_trie import LabelTrie, Path
from vlmopt.serving.openai_lm import PROVIDER, create_openai_lm

MODEL_PREFIX = f"{PROVIDER}+labels"
"""Model-string prefix of the LMs built here: DSPy's cache keys on the model string, and a cached
answer without probabilities (plain ``create_openai_lm``) must not answer a call that wants them."""

SCORING_WORKERS = 64
"""Scoring requests one engine keeps in flight (a trie node's request each); vLLM batches them."""

MAX_LOGPROB_TOKEN_IDS = 128
"""vLLM's cap on ``logprob_token_ids`` per request (``vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS``):
a node with more children is asked in several requests."""

Scoring = Literal["trie", "prompt_logprobs"]
"""``trie``: node requests that read the prefix cache (the default). ``prompt_logprobs``: one
cache-bypassing request per label, the earlier method, kept for the labels the trie cannot prefill
and for bench P10's side-by-side."""

T = TypeVar("T")


class ServerTokenizer:
    """``encode`` / ``decode`` through the server's ``/tokenize`` and ``/detokenize``: its exact token ids."""

    def __init__(self, client: openai.OpenAI, model: str):
        self._client = client
        self._model = model
        self._root = str(client.base_url).rstrip("/").removesuffix("/v1")  # vLLM serves them beside /v1

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._post("/tokenize", {"prompt": text, "add_special_tokens": add_special_tokens})["tokens"]

    def decode(self, tokens: list[int]) -> str:
        return self._post("/detokenize", {"tokens": tokens})["prompt"]

    def _post(self, path: str, body: dict) -> dict:
        url = self._root + path
        return _call(url, lambda: self._client.post(url, cast_to=object, body={"model": self._model, **body}))


@dataclass(frozen=True)
class ScoringPlan:
    """How one classifier field's labels are scored: which by the trie, which by prompt log-probs."""

    candidates: label_scoring.Candidates
    trie: LabelTrie
    trie_labels: tuple[int, ...]
    """Label index of each ``trie.paths`` entry."""
    prefills: Mapping[Path, str]
    """Each trie node's prefilled assistant text: the shared prefix and the node's tokens, decoded."""
    fallback: tuple[int, ...]
    """Labels scored by a ``prompt_logprobs`` request (some prefix of theirs has no text)."""


def scoring_plan(tokenizer, field: label_scoring.ClassifierField, scoring: Scoring) -> ScoringPlan:
    """Tokenize the answers; a label takes the trie if every node on its path has a text that re-tokenizes to it.

    ``tokenizer``: the server's (``ServerTokenizer``), or any with ``encode(text, add_special_tokens)``
    and ``decode(tokens)``.
    """
    candidates = label_scoring.candidate_tokens(tokenizer, field)
    if scoring == "prompt_logprobs":
        return ScoringPlan(candidates, LabelTrie.build([]), (), {}, tuple(range(len(field.labels))))
    texts: dict[Path, str | None] = {}  # node -> its prefill text; None where no text spells its tokens
    trie_labels, fallback = [], []
    for index, tokens in enumerate(candidates.tokens):
        path = tokens[candidates.shared:]
        for node in (path[:depth] for depth in range(len(path))):
            if node not in texts:
                prefix = list(tokens[:candidates.shared + len(node)])
                text = tokenizer.decode(prefix)
                texts[node] = text if tokenizer.encode(text, add_special_tokens=False) == prefix else None
        spelled = all(texts[path[:depth]] is not None for depth in range(len(path)))
        (trie_labels if spelled else fallback).append(index)
    trie = LabelTrie.build([candidates.tokens[i][candidates.shared:] for i in trie_labels])
    return ScoringPlan(candidates, trie, tuple(trie_labels), {node: texts[node] for node in trie.nodes},
                       tuple(fallback))


class LabelProbabilityEngine:
    """A DSPy engine: generation through ``create_openai_lm``, label probabilities added (see module doc).

    Requests that are not a single-label classifier, or that do not ask for log-probs, pass through
    untouched. Thread-safe: DSPy's threads share it, as they share the server. ``scoring`` is for
    benchmarks (``prompt_logprobs``: every label by the earlier, cache-bypassing method).
    """

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = True
    supported_params = {"temperature", "max_tokens", "top_p", "seed", "stop", "logprobs", "top_logprobs",
                        "response_format"}

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout: float = 120.0,
                 num_retries: int = 3, scoring: Scoring = "trie"):
        self.settings = {"base_url": base_url, "model": model, "api_key_env": api_key_env, "timeout": timeout,
                         "num_retries": num_retries, "scoring": scoring}
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.scoring = scoring
        # DSPy owns the generation request's retries (the outer LM's num_retries): one attempt here.
        self._generate = create_openai_lm(base_url, model, api_key_env=api_key_env, timeout=timeout,
                                          num_retries=0, cache=False)
        # A scoring request is retried alone (one node's request is cheaper than the whole call).
        api_key = os.environ[api_key_env] if api_key_env else "EMPTY"  # never OPENAI_API_KEY: not for this server
        self._client = openai.OpenAI(base_url=self.base_url, api_key=api_key, timeout=timeout, max_retries=num_retries)
        self._scoring = ThreadPoolExecutor(max_workers=SCORING_WORKERS, thread_name_prefix="vlmopt-label-scoring")
        self._tokenizer = ServerTokenizer(self._client, model)
        self._plans: dict[label_scoring.ClassifierField, ScoringPlan] = {}
        self._plans_lock = threading.Lock()  # DSPy's threads share the memo: tokenize each field once

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
        """label -> probability for this request's messages: the softmax of ``label_scores``."""
        return label_scoring.distribution(field, self.label_scores(request, field))

    def label_scores(self, request: Request, field: label_scoring.ClassifierField) -> list[float]:
        """Each label's summed answer log-prob after the shared prefix (one request per trie node, see module doc)."""
        plan = self._plan(field)
        messages = openai_chat_messages(request)
        steps = list(plan.trie.steps(MAX_LOGPROB_TOKEN_IDS))
        jobs = [lambda node=node, children=children: self._node_logprobs(messages, plan, node, children)
                for node, children in steps]
        jobs += [lambda index=index: self._prompt_logprobs_score(messages, field, plan.candidates, index)
                 for index in plan.fallback]
        futures = [self._scoring.submit(job) for job in jobs]
        wait(futures)  # a failure is raised once every request of the prediction has finished
        results = [future.result() for future in futures]
        edges: dict[Path, dict[int, float]] = {}
        for (node, _), logprobs in zip(steps, results[:len(steps)], strict=True):
            edges.setdefault(node, {}).update(logprobs)
        scores = dict(zip(plan.trie_labels, plan.trie.scores(edges), strict=True))
        scores.update(zip(plan.fallback, results[len(steps):], strict=True))
        return [scores[index] for index in range(len(field.labels))]

    def _node_logprobs(self, messages: list[dict], plan: ScoringPlan, node: Path,
                       children: tuple[int, ...]) -> dict[int, float]:
        """log p(child | messages, the node's answer prefix) for each child token, from one generated position."""
        url = f"{self.base_url}/chat/completions"
        completion = _call(url, lambda: self._client.chat.completions.create(
            model=self.model,
            messages=[*messages, {"role": "assistant", "content": plan.prefills[node]}],
            max_tokens=1,
            temperature=0.0,
            logprobs=True,
            extra_body={"add_generation_prompt": False, "continue_final_message": True,
                        "logprob_token_ids": list(children), "return_token_ids": True,
                        "return_tokens_as_token_ids": True},
        ))
        prompt = (completion.model_extra or {}).get("prompt_token_ids")
        logprobs = completion.choices[0].logprobs
        position = logprobs.content[0].top_logprobs if logprobs and logprobs.content else []
        found = {int(entry.token.removeprefix("token_id:")): entry.logprob for entry in position
                 if entry.token.startswith("token_id:")}
        if prompt is None or not found.keys() >= set(children):
            raise ProviderError(
                f"{url}: the server ignored logprob_token_ids or return_token_ids, which label probabilities need "
                "(vLLM 0.32 has both): upgrade it, or set backend.label_probabilities: false", provider=PROVIDER)
        if node and tuple(prompt[-len(node):]) != node:
            raise ProviderError(
                f"{self.base_url}: the answer prefix {plan.prefills[node]!r} tokenizes differently inside the chat "
                "template than on its own, so label probabilities cannot be read after it", provider=PROVIDER)
        return {child: found[child] for child in children}

    def _prompt_logprobs_score(self, messages: list[dict], field: label_scoring.ClassifierField,
                               candidates: label_scoring.Candidates, index: int) -> float:
        """Summed prompt log-prob of label ``index``'s tokens after the shared prefix (reads no prefix cache)."""
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

    def _plan(self, field: label_scoring.ClassifierField) -> ScoringPlan:
        with self._plans_lock:
            if field not in self._plans:
                self._plans[field] = scoring_plan(self._tokenizer, field, self.scoring)
            return self._plans[field]

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
    scoring: Scoring = "trie",
) -> dspy.LM:
    """``create_openai_lm`` plus measured label probabilities for single-label classifiers.

    Arguments as in ``create_openai_lm``; log-probs are always on (they are what carries the
    distribution). Other requests (multi-label, multi-field, free text) are answered as by
    ``create_openai_lm``. An unset ``api_key_env`` fails as there: the engine builds its
    generating LM with it first. ``scoring="prompt_logprobs"`` is the earlier, cache-bypassing method
    (bench P10 measures both; nothing else should want it).
    """
    engine = LabelProbabilityEngine(base_url, model, api_key_env=api_key_env, timeout=timeout, num_retries=num_retries,
                                    scoring=scoring)
    return dspy.LM(f"{MODEL_PREFIX}/{model}", engine=engine, temperature=temperature, max_tokens=max_tokens,
                   num_retries=num_retries, logprobs=True, cache=cache)


__all__ = ["LabelProbabilityEngine", "ScoringPlan", "ServerTokenizer", "create_vllm_lm", "scoring_plan"]
