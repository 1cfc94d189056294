"""The engine's parts on their own: micro-batcher, grammar, request conversion, label fields, loading."""

from __future__ import annotations

import base64
import io
import threading
from typing import Literal

import huggingface_hub
import pytest
import torch
import xgrammar as xgr
from dspy.lm15 import AudioPart, ImagePart, Message, Request, TextPart
from PIL import Image
from pydantic import TypeAdapter
from transformers import AutoTokenizer

from vlmopt.serving.batching import MicroBatcher
from vlmopt.serving.chat_inputs import chat_input_from_request
from vlmopt.serving.grammar import GrammarCompiler, bound_label_arrays
from vlmopt.serving.label_scoring import ClassifierField, candidate_tokens, classifier_field
from vlmopt.serving.label_trie import LabelTrie
from vlmopt.serving.model_loading import (
    HubUnreachableError,
    ModelSourceError,
    directory_fingerprint,
    locate_model,
    resolve_dtype,
)
from vlmopt.serving.vllm_probabilities import scoring_plan


def run_concurrently(batcher: MicroBatcher, items: list) -> list:
    """Submit every item from its own thread, all released at once; results or exceptions in order."""
    results: list = [None] * len(items)
    start = threading.Barrier(len(items))

    def call(index: int) -> None:
        start.wait()
        try:
            results[index] = batcher.submit(items[index])
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            results[index] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_batcher_gathers_concurrent_items_and_returns_each_its_own():
    seen = []
    batcher = MicroBatcher(lambda items: seen.append(list(items)) or [x * 10 for x in items],
                           max_batch_size=4, max_wait_ms=200)
    try:
        assert run_concurrently(batcher, list(range(8))) == [x * 10 for x in range(8)]
    finally:
        batcher.close()
    assert max(batcher.stats.batch_sizes) > 1 and max(batcher.stats.batch_sizes) <= 4
    assert any(len(batch) > 1 for batch in seen)
    assert sum(size * count for size, count in batcher.stats.histogram().items()) == 8


def test_batcher_isolates_a_failing_item():
    def double_unless_bad(items):
        if "bad" in items:
            raise ValueError("bad item in batch")
        return [item * 2 for item in items]

    batcher = MicroBatcher(double_unless_bad, max_batch_size=8, max_wait_ms=200)
    try:
        results = run_concurrently(batcher, ["a", "bad", "c", "d"])
    finally:
        batcher.close()
    assert results[0] == "aa" and results[2] == "cc" and results[3] == "dd"
    assert isinstance(results[1], ValueError)
    assert batcher.stats.failed_items == 1


def test_batcher_hands_per_item_exceptions_to_their_callers_and_refuses_after_close():
    batcher = MicroBatcher(lambda items: [KeyError(i) if i < 0 else i for i in items], max_batch_size=2)
    assert batcher.submit(3) == 3
    with pytest.raises(KeyError):
        batcher.submit(-1)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def test_open_label_arrays_get_a_bound_and_explicit_bounds_stay():
    schema = TypeAdapter(dict[str, list[Literal["a", "b", "c"]]]).json_schema()
    assert bound_label_arrays(schema)["additionalProperties"]["maxItems"] == 3
    fixed = {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 1}
    assert bound_label_arrays(fixed)["maxItems"] == 1
    referenced = {"type": "array", "items": {"$ref": "#/$defs/L"}, "$defs": {"L": {"enum": ["x", "y"]}}}
    assert bound_label_arrays(referenced)["maxItems"] == 2
    assert "maxItems" not in bound_label_arrays({"type": "array", "items": {"type": "string"}})
    assert "maxItems" not in schema["additionalProperties"]  # the caller's schema is not mutated


@pytest.fixture(scope="module")
def compiler(tiny_lfm2_vl_dir) -> GrammarCompiler:
    tokenizer = AutoTokenizer.from_pretrained(tiny_lfm2_vl_dir)
    return GrammarCompiler(tokenizer, vocab_size=len(tokenizer), stop_token_ids=[tokenizer.eos_token_id])


def test_grammar_pins_compact_whitespace(compiler):
    schema = {"type": "object", "properties": {"label": {"type": "array", "items": {"enum": ["cat", "dog"]}}},
              "required": ["label"], "additionalProperties": False}
    grammar = compiler.compile({"type": "json_schema", "schema": schema})

    def accepts(text: str) -> bool:
        matcher = xgr.GrammarMatcher(grammar)
        return matcher.accept_string(text) and matcher.is_completed()

    assert accepts('{"label":["cat","dog"]}')
    assert not accepts('{"label": ["cat","dog"]}')
    assert not accepts('{"label":["cat",\n"dog"]}')
    assert not accepts('{"label":["cat","dog","cat"]}')  # more items than labels
    assert not accepts('{"label":["cow"]}')


def test_grammar_refuses_unknown_response_formats(compiler):
    with pytest.raises(ValueError, match="unsupported response_format"):
        compiler.compile({"type": "text"})


def test_classifier_field_only_for_a_single_string_enum():
    def fmt(properties):
        return {"type": "json_schema", "schema": {"type": "object", "properties": properties}}

    single = fmt({"label": {"type": "string", "enum": ["a", "b"]}})
    assert classifier_field(single) == ClassifierField("label", ("a", "b"))
    assert classifier_field(fmt({"label": {"type": "string", "enum": ["a", "b"]}, "why": {"type": "string"}})) is None
    assert classifier_field(fmt({"label": {"type": "array", "items": {"enum": ["a", "b"]}}})) is None
    assert classifier_field(fmt({"ok": {"type": "boolean"}})) is None
    assert classifier_field(None) is None


def test_candidate_tokens_share_the_json_prefix(tiny_lfm2_vl_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lfm2_vl_dir)
    field = ClassifierField("label", ("cat", "dog", "slope streak"))
    candidates = candidate_tokens(tokenizer, field)
    assert [tokenizer.decode(t) for t in candidates.tokens] == [field.answer_text(label) for label in field.labels]
    assert field.answer_text("cat") == '{"label":"cat"}'
    prefix = candidates.tokens[0][: candidates.shared]
    assert all(t[: candidates.shared] == prefix for t in candidates.tokens)
    assert len({t[candidates.shared] for t in candidates.tokens}) > 1


def test_label_trie_has_a_step_per_internal_node_and_sums_each_path():
    trie = LabelTrie.build([(7, 9), (7, 3, 9), (5, 9)])  # "cat", "caterpillar", "dog" after the shared prefix
    assert trie.nodes == {(): (7, 5), (7,): (9, 3), (7, 3): (9,), (5,): (9,)}
    edges = {(): {7: -0.1, 5: -2.0}, (7,): {9: -1.0, 3: -0.5}, (7, 3): {9: -0.2}, (5,): {9: -0.3}}
    assert trie.scores(edges) == pytest.approx([-1.1, -0.8, -2.3])
    assert list(trie.steps(max_children=1))[:3] == [((), (7,)), ((), (5,)), ((7,), (9,))]  # children split


def test_scoring_plan_leaves_labels_no_text_prefix_spells_to_prompt_logprobs(tiny_idefics3_dir):
    """The tiny Idefics3 splits "é" into two byte tokens: the cut between them decodes to U+FFFD."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_idefics3_dir)
    field = ClassifierField("label", ("café", "cafe", "caterpillar"))
    plan = scoring_plan(tokenizer, field, "trie")
    assert plan.fallback == (0,) and plan.trie_labels == (1, 2)
    shared = plan.candidates.tokens[1][:plan.candidates.shared]
    for node, text in plan.prefills.items():
        assert tokenizer.encode(text, add_special_tokens=False) == [*shared, *node]
    assert scoring_plan(tokenizer, field, "prompt_logprobs").fallback == (0, 1, 2)


def encoded(img: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_request_becomes_chat_messages_and_rgb_images():
    transparent = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    request = Request(model="m", system="Be brief.", messages=(
        Message.user([TextPart("Demo"), ImagePart(data=encoded(transparent), media_type="image/png")]),
        Message.assistant('{"label":"cat"}'),
        Message.user([ImagePart(url="data:image/png;base64," + encoded(Image.new("L", (3, 3), 7)))]),
    ))
    chat = chat_input_from_request(request)
    assert chat.messages[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert chat.messages[1]["content"] == [{"type": "text", "text": "Demo"}, {"type": "image"}]
    assert chat.messages[2] == {"role": "assistant", "content": [{"type": "text", "text": '{"label":"cat"}'}]}
    assert [img.mode for img in chat.images] == ["RGB", "RGB"]
    assert chat.images[0].getpixel((0, 0)) == (255, 255, 255)  # transparency flattened on white
    assert chat.images[1].getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize(("part", "message"), [
    (AudioPart(data=base64.b64encode(b"RIFF").decode()), "'audio' part cannot be sent"),
    (ImagePart(url="https://example.com/cat.jpg"), "only inline or local images"),
    (ImagePart(data=base64.b64encode(b"GIF89a-broken").decode(), media_type="image/gif"), "part 1"),
])
def test_unreadable_parts_are_refused_with_their_position(part, message):
    request = Request(model="m", messages=(Message.user([TextPart("x"), part]),))
    with pytest.raises(ValueError, match=message):
        chat_input_from_request(request)


def test_directory_fingerprint_follows_the_bytes(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    first = directory_fingerprint(tmp_path)
    assert directory_fingerprint(tmp_path) == first
    (tmp_path / "config.json").write_text('{"a": 1}')
    assert directory_fingerprint(tmp_path) != first


def test_uncached_hub_id_in_offline_mode_fails_at_once_with_the_way_out(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match=r"'someone/no-such-model'.*HF_HUB_OFFLINE is set.*model\.id"):
        locate_model("someone/no-such-model")


def test_offline_is_what_huggingface_hub_says_not_the_environment(monkeypatch):
    # conftest exports HF_HUB_OFFLINE=1, but the library was told it is online: then vlmopt asks
    # the hub too (here an endpoint that refuses), rather than judging the environment itself.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnreachableError, match=r"'someone/no-such-model'.*unreachable \(ConnectError"):
        locate_model("someone/no-such-model")


def test_a_missing_model_directory_is_named_not_blamed_on_the_hub(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelSourceError, match=f"{missing}.*does not exist; give a local model directory"):
        locate_model(missing)
    with pytest.raises(ModelSourceError, match="'not a hub id!' is neither a local directory nor a hub id"):
        locate_model("not a hub id!")  # no path look, yet no valid hub id: huggingface_hub's validation says so


def test_local_directory_takes_no_revision_and_dtypes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="revision"):
        locate_model(str(tmp_path), revision="main")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float33", device=torch.device("cpu"))


class _ClosableLM:
    """Stands in for a dspy.LM in the ownership check: counts ``close`` calls (a hosted engine has none)."""

    engine = "hosted-model"

    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_job_closes_the_lms_built_for_it_and_no_others():
    from vlmopt.serving.factory import closes_the_lms_it_creates, job_owned

    mine, callers, outside = _ClosableLM(), _ClosableLM(), _ClosableLM()

    @closes_the_lms_it_creates
    def job(lm_from_a_callers_factory):
        job_owned(mine)
        return lm_from_a_callers_factory

    assert job(callers) is callers
    assert (mine.closed, callers.closed) == (1, 0)
    job_owned(outside)  # no job running: nothing is registered, nothing closes later
    assert outside.closed == 0
