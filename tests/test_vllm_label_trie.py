"""Label probabilities on vLLM along the label token trie, on the session's real vLLM (CPU) server.

* Labels that share first tokens ("ca", "cat", "cater", "caterpillar") are scored node by node:
  each label's summed log-prob equals the earlier one-request-per-label ``prompt_logprobs``
  method's, and the distribution the in-process engine's.
* A server that ignores ``logprob_token_ids`` (an older vLLM drops unknown fields) is a one-line
  error naming the fix.
* The scoring requests read the prefix cache: the server's own hit counter (``/metrics``) rises by
  at least the generation prompt's full blocks for every node request, where the
  ``prompt_logprobs`` method (which vLLM serves without a cache lookup) adds none.
"""

from __future__ import annotations

import base64
import io
import json
import re
import urllib.request

import dspy
import httpx
import pytest
from dspy.lm15 import Config, ImagePart, Message, ProviderError, Request, TextPart
from PIL import Image

from fixtures_vllm import forward_to, loopback_proxy
from vlmopt._dspy_compat import openai_chat_messages
from vlmopt.config import TaskSpec
from vlmopt.programs import create_program
from vlmopt.programs.confidence import label_confidence
from vlmopt.serving.label_scoring import ClassifierField
from vlmopt.serving.transformers_engine import create_lm as create_in_process_lm
from vlmopt.serving.vllm_probabilities import LabelProbabilityEngine, create_vllm_lm

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TOLERANCE = 0.02
"""Per label, on log-probs (trie vs prompt_logprobs, one server) and on probabilities (vs in-process)."""

SHARING = ("ca", "cat", "cater", "caterpillar", "dog")
"""In the tiny Idefics3's vocabulary "ca", "cater" and "caterpillar" share c, a (and "ter");
"cat" and "dog" are one token each."""

SHAPES = ("circle", "square", "triangle")


def _png(rgb: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), rgb).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _request(rgb: tuple[int, int, int], instruction: str = "Which animal is it?") -> Request:
    image = ImagePart(url=f"data:image/png;base64,{_png(rgb)}")
    return Request(model="tiny-idefics3", messages=(Message.user([image, TextPart(instruction)]),), config=Config())


def test_labels_sharing_tokens_score_as_one_request_per_label(vllm_server):
    field = ClassifierField("label", SHARING)
    trie = LabelProbabilityEngine(vllm_server.base_url, vllm_server.model)
    per_label = LabelProbabilityEngine(vllm_server.base_url, vllm_server.model, scoring="prompt_logprobs")
    try:
        for rgb in ((220, 40, 40), (30, 60, 220)):
            request = _request(rgb)
            assert trie.label_scores(request, field) == pytest.approx(per_label.label_scores(request, field),
                                                                      abs=TOLERANCE)
        plan = trie._plan(field)
        assert plan.fallback == () and len(plan.trie.nodes[()]) < len(SHARING)  # the root has shared children
        assert max(map(len, plan.trie.nodes)) >= 3  # "caterpillar" is scored deep below the shared "c", "a"
    finally:
        trie.close()
        per_label.close()


def test_labels_sharing_tokens_agree_with_the_in_process_engine(vllm_server, tiny_idefics3_dir):
    labels = list(SHARING)
    program = create_program(TaskSpec(labels=labels), labels)
    in_process = create_in_process_lm(str(tiny_idefics3_dir), cache=False)
    served = create_vllm_lm(vllm_server.base_url, vllm_server.model, max_tokens=32, cache=False)
    try:
        for rgb in ((220, 40, 40), (40, 200, 60)):
            image = dspy.Image(Image.new("RGB", (64, 64), rgb))
            with dspy.context(lm=in_process):
                expected, _ = label_confidence(program(image=image))
            with dspy.context(lm=served):
                probabilities, _ = label_confidence(program(image=image))
            assert probabilities == pytest.approx(expected, abs=TOLERANCE)
    finally:
        in_process.engine.close()
        served.engine.close()


def _cache_counters(root_url: str) -> tuple[float, int]:
    """(prefix-cache hits in tokens, the server's KV block size)."""
    with urllib.request.urlopen(f"{root_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    hits = sum(float(v) for v in re.findall(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", text, re.M))
    return hits, int(re.search(r'^vllm:cache_config_info\{[^}]*\bblock_size="(\d+)"', text, re.M).group(1))


def test_scoring_requests_read_the_prefix_cache(vllm_server):
    """A prompt of several KV blocks: every node request reuses the generation's full blocks."""
    instruction = "Name the shape drawn in the picture: a circle, a square or a triangle. " * 12
    field = ClassifierField("label", SHAPES)
    engines = {scoring: LabelProbabilityEngine(vllm_server.base_url, vllm_server.model, scoring=scoring)
               for scoring in ("trie", "prompt_logprobs")}
    gained = {}
    try:
        for engine in engines.values():
            engine.label_scores(_request((5, 5, 5), instruction), field)  # tokenizes the labels once
        for scoring, rgb in (("trie", (220, 40, 40)), ("prompt_logprobs", (30, 60, 220))):
            request = _request(rgb, instruction)
            # what a prediction's generation request leaves in the cache: its prompt's full blocks
            generation = httpx.post(f"{vllm_server.base_url}/chat/completions", timeout=60, json={
                "model": vllm_server.model, "messages": openai_chat_messages(request), "max_tokens": 1})
            prompt_tokens = generation.json()["usage"]["prompt_tokens"]
            before, block = _cache_counters(vllm_server.root_url)
            engines[scoring].label_scores(request, field)
            gained[scoring] = _cache_counters(vllm_server.root_url)[0] - before
        nodes = len(engines["trie"]._plan(field).trie.nodes)
        assert prompt_tokens >= 2 * block, "the prompt must span full KV blocks for a hit to show"
        assert gained["trie"] >= nodes * (prompt_tokens // block * block)
        assert gained["prompt_logprobs"] == 0  # vLLM skips the cache lookup for prompt_logprobs requests
    finally:
        for engine in engines.values():
            engine.close()


def test_a_server_without_logprob_token_ids_is_a_one_line_error_naming_the_fix(vllm_server):
    """The real server behind a proxy that drops the fields, as a vLLM that predates them ignores them."""

    def handle(handler, body: bytes) -> None:
        request = {k: v for k, v in json.loads(body).items() if k not in ("logprob_token_ids", "return_token_ids")}
        forward_to(vllm_server.root_url, handler, json.dumps(request).encode())

    with loopback_proxy(handle) as base_url:
        engine = LabelProbabilityEngine(base_url, vllm_server.model, num_retries=0)
        try:
            with pytest.raises(ProviderError, match="ignored logprob_token_ids") as caught:
                engine.label_scores(_request((220, 40, 40)), ClassifierField("label", SHAPES))
        finally:
            engine.close()
    message = str(caught.value)
    assert "\n" not in message and "backend.label_probabilities: false" in message
