"""The engines under many threads, and who closes them (issue 13, item 5).

Each race is driven into its window deterministically: a gate (an ``Event``) holds one thread at
the exact point where the old code let another one in, and the test asserts the outcome, never a
duration. The gates' bounded waits only keep a regressed build from hanging the suite.
"""

from __future__ import annotations

import atexit
import json
import threading
import warnings

import pytest
from dspy.lm15 import Config, Message, ProviderError, Request, ServerError, TransportError
from PIL import Image
from transformers import AutoTokenizer

from fixtures_vllm import loopback_proxy
from study_task import make_colour_folder, study_config
from vlmopt.datasets.images import BadImage, open_image
from vlmopt.optimizers.study import shared_lm_factory
from vlmopt.pipeline import evaluate_task
from vlmopt.serving import batching
from vlmopt.serving.batching import MicroBatcher
from vlmopt.serving.label_scoring import ClassifierField
from vlmopt.serving.transformers_engine import TransformersEngine, create_lm
from vlmopt.serving.vllm_probabilities import LabelProbabilityEngine
from vlmopt.serving.vllm_server import free_port

GATE_S = 2.0
"""How long a gate holds its thread when nothing releases it (the fixed code's path)."""


def text_request(text: str, model: str = "m", **config) -> Request:
    return Request(model=model, messages=(Message.user(text),), config=Config(**config))


def run_in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    """Start ``fn(*args)`` in a daemon thread; its result or exception lands in the returned dict."""
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["result"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, outcome


def engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("vlmopt-engine-") and t.is_alive()}


# --- MicroBatcher -------------------------------------------------------------------------------

def test_submit_racing_close_is_refused_never_stranded(monkeypatch):
    """A submit that passed the closed check just before close() must not queue behind the stop marker.

    The gate holds the submitting thread between its start and its enqueue (in ``Future()``) while
    close() runs to the end; the old code then queued the item after the stop marker, and its
    caller waited forever on a future nobody would set.
    """
    batcher = MicroBatcher(lambda items: list(items), max_batch_size=1)
    held, release = threading.Event(), threading.Event()

    class GatedFuture(batching.Future):
        def __init__(self) -> None:
            super().__init__()
            held.set()
            release.wait(GATE_S * 5)

    monkeypatch.setattr(batching, "Future", GatedFuture)
    submitter, outcome = run_in_thread(batcher.submit, "late")
    assert held.wait(GATE_S * 5)
    batcher.close()
    release.set()
    submitter.join(GATE_S * 5)
    assert not submitter.is_alive(), "submit() is stranded behind close()"
    assert isinstance(outcome.get("error"), RuntimeError) and "closed" in str(outcome["error"])


def test_batchers_share_one_exit_hook_and_leave_it_when_closed():
    hooks = atexit._ncallbacks()
    batchers = [MicroBatcher(lambda items: list(items)) for _ in range(3)]
    assert atexit._ncallbacks() == hooks  # the old code registered one hook per batcher
    assert all(batcher in batching._LIVE for batcher in batchers)
    for batcher in batchers:
        batcher.close()
    assert not any(batcher in batching._LIVE for batcher in batchers)


# --- the in-process engine --------------------------------------------------------------------

class PausingBackend:
    """The fast tokenizer's Rust backend; pauses the batch worker's first encode, after padding was set."""

    def __init__(self, backend):
        self._backend = backend
        self.paused, self.resume = threading.Event(), threading.Event()

    def encode_batch(self, *args, **kwargs):
        if threading.current_thread().name.startswith("vlmopt-engine-") and not self.paused.is_set():
            self.paused.set()
            self.resume.wait(GATE_S)
        return self._backend.encode_batch(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._backend, name)


def test_count_prompt_tokens_never_unpads_a_batch_being_encoded(tiny_idefics3_dir):
    """The fast tokenizer keeps "pad or not" as state each encode call sets before it encodes.

    The worker is held after it switched padding on for a two-row batch; a count from this thread
    then ran at once on the old code and switched padding off, so the batch came back ragged
    ("Unable to create tensor"), failed, and fell apart into two single-row generate calls.
    """
    engine = TransformersEngine(str(tiny_idefics3_dir), max_batch_size=2, max_wait_ms=60_000)
    try:
        alone = engine.count_prompt_tokens(text_request("How many tokens is this prompt?"))
        backend = PausingBackend(engine.tokenizer._tokenizer)
        engine.tokenizer._tokenizer = backend
        calls = [run_in_thread(engine.complete, text_request(text, max_tokens=1))
                 for text in ("Hi", "A much longer prompt, so the two rows need padding")]
        assert backend.paused.wait(GATE_S * 5)
        counted = engine.count_prompt_tokens(text_request("How many tokens is this prompt?"))
        backend.resume.set()
        for thread, _ in calls:
            thread.join(GATE_S * 30)
        assert all("result" in outcome for _, outcome in calls), [outcome.get("error") for _, outcome in calls]
        assert engine.stats.batch_sizes == [2] and engine.stats.generate_calls == 1
        assert counted == alone
    finally:
        engine.close()


def test_a_sampled_request_answers_the_same_alone_or_batched(tiny_idefics3_dir):
    """Same prompt, seed and settings: the same sampled text whatever shares its batch.

    The old engine seeded torch's global RNG once per batch and transformers dealt each step's
    draws out row by row, so a row's answer changed with its batch-mates.
    """
    settings = dict(max_tokens=12, temperature=1.0, seed=7, logprobs=1)
    prompts = ("Describe a cat.", "Name three colours, please.", "What is two plus two?")
    alone_engine = TransformersEngine(str(tiny_idefics3_dir), max_batch_size=1)
    batch_engine = TransformersEngine(str(tiny_idefics3_dir), max_batch_size=3, max_wait_ms=60_000)
    try:
        alone = [alone_engine.complete(text_request(prompt, **settings)) for prompt in prompts]
        calls = [run_in_thread(batch_engine.complete, text_request(prompt, **settings)) for prompt in prompts]
        for thread, _ in calls:
            thread.join(GATE_S * 30)
        batched = [outcome["result"] for _, outcome in calls]
        assert batch_engine.stats.batch_sizes == [3]
        assert [r.text for r in batched] == [r.text for r in alone]
        assert all(r.usage.output_tokens > 1 for r in alone)
        for got, want in zip(batched, alone, strict=True):  # drawn from, and reported under, the same distribution
            assert [e.logprob for e in got.logprobs] == pytest.approx([e.logprob for e in want.logprobs], abs=1e-4)
            assert all(e.logprob <= 0.0 for e in got.logprobs)
        reseeded = alone_engine.complete(text_request(prompts[0], **{**settings, "seed": 8}))
        assert reseeded.text != alone[0].text
    finally:
        alone_engine.close()
        batch_engine.close()


# --- image decoding ------------------------------------------------------------------------------

class OtherThreadWarning(UserWarning):
    pass


def test_image_decoding_keeps_the_warning_filters_other_threads_install(tmp_path, monkeypatch):
    """``warnings.catch_warnings()`` restores the whole process's filter list on exit: a filter another
    thread added while an image was being decoded vanished with the old code."""
    path = tmp_path / "small.png"
    Image.new("RGB", (8, 8), "red").save(path)
    inside, leave = threading.Event(), threading.Event()
    real_open = Image.open

    def open_when_released(*args, **kwargs):
        inside.set()
        leave.wait(GATE_S * 5)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_when_released)
    with warnings.catch_warnings():  # this test's own filter goes when the test ends
        decoder, outcome = run_in_thread(open_image, path)
        assert inside.wait(GATE_S * 5)
        warnings.filterwarnings("error", category=OtherThreadWarning)
        leave.set()
        decoder.join(GATE_S * 5)
        assert outcome["result"].size == (8, 8)
        assert any(entry[2] is OtherThreadWarning for entry in warnings.filters)


def test_pil_limit_caps_a_larger_max_pixels(tmp_path, monkeypatch):
    """Between PIL's limit and twice it PIL only warns; the image is refused all the same, as when the
    old code turned that warning into an error, and under ``-W error`` too."""
    path = tmp_path / "wide.png"
    Image.new("L", (300, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)
    for action in ("ignore", "error"):
        with warnings.catch_warnings():
            warnings.simplefilter(action, Image.DecompressionBombWarning)
            with pytest.raises(BadImage) as caught:
                open_image(path, max_pixels=10**6)
        assert caught.value.reason == "too_large" and "30000" in str(caught.value)


# --- the vLLM label-probability engine --------------------------------------------------------

class FirstEncodeWaits:
    """A real tokenizer whose first ``encode`` waits, so other threads reach the memo meanwhile."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.calls = 0
        self.lock = threading.Lock()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            threading.Event().wait(GATE_S)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)


def test_label_tokens_are_fetched_once_when_threads_meet_an_unseen_classifier(tiny_idefics3_dir):
    field = ClassifierField("label", ("circle", "square", "triangle"))
    engine = LabelProbabilityEngine(f"http://127.0.0.1:{free_port()}/v1", "tiny")
    try:
        engine._tokenizer = tokenizer = FirstEncodeWaits(AutoTokenizer.from_pretrained(tiny_idefics3_dir))
        start = threading.Barrier(4)

        def first_use():
            start.wait()
            return engine._plan(field)

        calls = [run_in_thread(first_use) for _ in range(4)]
        for thread, _ in calls:
            thread.join(GATE_S * 5)
        plans = {id(outcome["result"]) for _, outcome in calls}
        assert len(plans) == 1
        plan = calls[0][1]["result"]
        assert plan.fallback == ()
        # one plan's encodes: each answer, then each trie node's prefix text (checked to re-tokenize)
        assert tokenizer.calls == len(field.labels) + len(plan.trie.nodes)  # the old code tokenized once per thread
    finally:
        engine.close()


@pytest.fixture
def scripted_server():
    """A loopback HTTP server answering ``/tokenize`` and ``/detokenize`` (a token per character) and
    failing chat completions with ``status``."""
    state = {"status": 500, "chat_calls": 0}

    def handle(handler, body: bytes) -> None:
        if handler.path == "/tokenize":
            status, payload = 200, {"tokens": [ord(c) for c in json.loads(body)["prompt"]]}
        elif handler.path == "/detokenize":
            status, payload = 200, {"prompt": "".join(map(chr, json.loads(body)["tokens"]))}
        else:
            state["chat_calls"] += 1
            status, payload = state["status"], {"error": {"message": f"scripted {state['status']}"}}
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    with loopback_proxy(handle) as base_url:
        yield base_url, state


@pytest.mark.parametrize(("status", "error", "attempts"), [(500, ServerError, 2), (400, ProviderError, 1)])
def test_scoring_failures_are_lm15_errors_after_the_clients_retries(scripted_server, status, error, attempts):
    base_url, state = scripted_server
    state["status"] = status
    engine = LabelProbabilityEngine(base_url, "tiny", num_retries=1)
    field = ClassifierField("label", ("circle", "square"))
    try:
        with pytest.raises(error, match=rf"/v1/chat/completions: HTTP {status}: .*scripted {status}") as caught:
            engine.label_probabilities(text_request("Which shape?"), field)
        requests = len(engine._plan(field).trie.nodes)  # one per trie node: 15 for these one-char tokens
    finally:
        engine.close()
    assert caught.value.status == status
    assert state["chat_calls"] == attempts * requests  # 5xx retried per request, 4xx not


def test_unreachable_scoring_server_is_a_transport_error_naming_it():
    port = free_port()
    engine = LabelProbabilityEngine(f"http://127.0.0.1:{port}/v1", "tiny", num_retries=0, timeout=5)
    try:
        with pytest.raises(TransportError, match=rf"127\.0\.0\.1:{port}/tokenize"):
            engine.label_probabilities(text_request("Which shape?"), ClassifierField("label", ("a", "b")))
    finally:
        engine.close()


# --- who loads and who closes -----------------------------------------------------------------

@pytest.fixture
def tiny_task(tiny_idefics3_dir, tmp_path):
    cfg = study_config(make_colour_folder(tmp_path / "colours", per_class=3), tmp_path)
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"id": str(tiny_idefics3_dir),
                                                                        "max_new_tokens": 16})})


def test_the_pipeline_closes_the_engine_it_built_and_not_the_callers(tiny_task):
    before = engine_threads()
    evaluate_task(tiny_task, split="test", limit=2)
    assert engine_threads() <= before, "evaluate_task left its engine's worker running"

    lm = create_lm(tiny_task.model.id, max_new_tokens=16, cache=False)
    try:
        evaluate_task(tiny_task, split="test", limit=2, lm=lm)
        assert lm(text_request("Still there?", lm.model, max_tokens=2)).usage.output_tokens >= 1
    finally:
        lm.engine.close()


def test_trials_differing_in_structured_generation_share_the_loaded_model(tiny_task):
    free_spec = tiny_task.task.model_copy(update={"structured_generation": False})
    free_task = tiny_task.model_copy(update={"task": free_spec})
    factory = shared_lm_factory()
    structured, free = factory(tiny_task), factory(free_task)
    try:
        assert free.engine.model is structured.engine.model  # the old factory loaded the weights twice
        assert structured.engine.supports_response_schema and not free.engine.supports_response_schema
        assert free.dump_state()["engine"]["state"]["structured"] is False
        assert factory(tiny_task) is structured and factory(free_task) is free
        assert free(text_request("Hi", free.model, max_tokens=2)).usage.output_tokens >= 1
    finally:
        structured.engine.close()
    assert free.engine._batcher is structured.engine._batcher  # one worker, closed with either
