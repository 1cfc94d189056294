"""The in-process transformers engine, end to end through DSPy, on every registered model family.

This module is the in-process half of the model-family conformance matrix: the ``lm`` fixture
runs every test once per family in ``vlmopt.serving.families.FAMILIES`` (its tiny random-weight
build of the real architecture). Random weights answer nonsense, but nonsense that must still be
*valid*: every constrained answer parses and validates, concurrent callers are batched yet each
gets its own answer, and the label distribution equals a direct, unbatched computation.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import dspy
import pytest
import torch
from dspy.clients.cache import Cache
from dspy.lm15 import Config, ImagePart, Message, Request, TextPart, request_from_openai_chat
from dspy.utils.exceptions import AdapterParseError
from PIL import Image
from pydantic import BaseModel, TypeAdapter

from fixtures_models import TINY_ARCHS
from vlmopt.programs.adapter import create_adapter
from vlmopt.programs.classify import Classify
from vlmopt.programs.confidence import prediction_probabilities
from vlmopt.serving.chat_inputs import chat_input_from_request, encode_prompts
from vlmopt.serving.families import FAMILIES, scoring_inputs
from vlmopt.serving.label_scoring import ClassifierField, candidate_tokens, response_probabilities, score_candidates
from vlmopt.serving.model_loading import HubUnreachableError
from vlmopt.serving.prefix_cache import PrefixCache
from vlmopt.serving.transformers_engine import TransformersEngine, create_lm

ANIMALS = ("cat", "dog", "bird")
COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]


class Single(dspy.Signature):
    """Classify the animal in the image."""

    image: dspy.Image = dspy.InputField()
    label: Literal["cat", "dog", "bird"] = dspy.OutputField()


class Multi(dspy.Signature):
    """List every animal in the image."""

    image: dspy.Image = dspy.InputField()
    label: list[Literal["cat", "dog", "bird"]] = dspy.OutputField()


class Scene(BaseModel):
    place: Literal["indoor", "outdoor"]
    count: Literal[1, 2, 3]


class Fields(dspy.Signature):
    """Describe the image."""

    image: dspy.Image = dspy.InputField()
    animal: Literal["cat", "dog", "bird"] = dspy.OutputField()
    color: Literal["red", "green", "blue"] = dspy.OutputField()
    scene: Scene = dspy.OutputField()


def png(color: str, size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def image(color: str) -> dspy.Image:
    return dspy.Image("data:image/png;base64," + base64.b64encode(png(color)).decode())


@pytest.fixture(scope="module", params=TINY_ARCHS)
def lm(request, tiny_model_dir) -> dspy.LM:
    """One uncached LM per model family; batches wait 50 ms so concurrent calls meet."""
    torch.set_num_threads(2)
    lm = create_lm(str(tiny_model_dir(request.param)), max_new_tokens=96, max_batch_size=8, max_wait_ms=50,
                   cache=False)
    yield lm
    lm.engine.close()


def predict(lm: dspy.LM, signature, **inputs) -> dspy.Prediction:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        return dspy.Predict(signature)(**inputs)


def last_request(lm: dspy.LM) -> Request:
    """The last adapter-made request: DSPy records its OpenAI-style messages, rebuilt as DSPy does."""
    return request_from_openai_chat({"model": lm.model, "messages": lm.history[-1]["messages"]})


def last_text(lm: dspy.LM) -> str:
    output = lm.history[-1]["outputs"][0]
    return output["text"] if isinstance(output, dict) else output


def test_single_label_answers_are_labels_with_a_distribution(lm):
    for color in COLORS[:3]:
        pred = predict(lm, Single, image=image(color))
        assert pred.label in ANIMALS
        assert json.loads(last_text(lm)) == {"label": pred.label}
        probs = prediction_probabilities(pred, ANIMALS)
        assert probs is not None and set(probs) == set(ANIMALS)
        assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6)
        assert max(probs, key=probs.get) == pred.label  # the answer is the most likely label


def test_multi_label_answers_validate(lm):
    for color in COLORS[:3]:
        pred = predict(lm, Multi, image=image(color))
        raw = json.loads(last_text(lm))
        TypeAdapter(list[Literal["cat", "dog", "bird"]]).validate_python(raw["label"])
        assert set(raw) == {"label"} and pred.label == raw["label"]
        assert len(pred.label) <= len(ANIMALS)  # maxItems bound keeps weak models from looping
        assert prediction_probabilities(pred) is None  # token log-probs, not a label distribution


def test_multi_field_answers_validate(lm):
    for color in COLORS[:3]:
        pred = predict(lm, Fields, image=image(color))
        raw = last_text(lm)
        assert " " not in raw and "\n" not in raw  # compact JSON, whitespace pinned
        parsed = json.loads(raw)
        assert list(parsed) == ["animal", "color", "scene"]
        assert pred.animal in ANIMALS and pred.color in ("red", "green", "blue")
        assert Scene.model_validate(parsed["scene"]) == pred.scene


def test_demos_and_system_prompt_reach_the_model(lm):
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        program = dspy.Predict(Single)
        program.demos = [dspy.Example(image=image("blue"), label="dog")]
        program(image=image("red"))
    chat = chat_input_from_request(last_request(lm))
    assert [m["role"] for m in chat.messages] == ["system", "user", "assistant", "user"]
    assert len(chat.images) == 2 and chat.images[0].getpixel((0, 0)) == (0, 0, 255)
    prompt = lm.engine.render_prompt(chat)
    assert "Classify the animal in the image." in prompt and '"label": "dog"' in prompt


@torch.inference_mode()
def unpadded_answer_scores(engine, prompt: str, images: list, answers: list[list[int]], shared: int) -> list[float]:
    """The reference: one plain forward per answer (no batching, no cache, no logits_to_keep), each
    answer's log-prob summed over its tokens after the ``shared`` prefix all answers have in common.

    Per-token type ids continue past the prompt as the answer's own type: text (0) after Gemma 3's
    images and in Qwen's mm_token_type_ids, suffix (1) after PaliGemma's bidirectional prefix."""
    encoded = encode_prompts(engine.processor, [prompt], [images])
    types = {"mm_token_type_ids": 0, "token_type_ids": 1 if engine.family.token_types == "prefix" else 0}
    if not engine.family.token_types:
        types.pop("token_type_ids")
    extra = {k: v for k, v in encoded.items() if k not in ("input_ids", "attention_mask", "token_type_ids", "labels")}
    scores = []
    for answer in answers:
        ids = torch.cat([encoded["input_ids"], torch.tensor([answer])], dim=1)
        for key, answer_type in types.items():
            if key in encoded:
                extra[key] = torch.cat([encoded[key], torch.full((1, len(answer)), answer_type,
                                                                 dtype=encoded[key].dtype)], dim=1)
        logprobs = engine.model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].log_softmax(-1)
        start = ids.shape[1] - len(answer)
        scores.append(sum(float(logprobs[start + t - 1, answer[t]]) for t in range(shared, len(answer))))
    return scores


def test_label_probabilities_match_a_direct_computation(lm):
    pred = predict(lm, Single, image=image("green"))
    engine = lm.engine
    chat = chat_input_from_request(last_request(lm))
    prompt = engine.render_prompt(chat)
    answers = [engine.tokenizer.encode(json.dumps({"label": a}, separators=(",", ":")), add_special_tokens=False)
               for a in ANIMALS]
    shared = next(i for i in range(len(answers[0])) if len({tuple(a[: i + 1]) for a in answers}) > 1)
    scores = unpadded_answer_scores(engine, prompt, chat.images, answers, shared)
    expected = dict(zip(ANIMALS, torch.tensor(scores).softmax(0).tolist(), strict=True))
    got = prediction_probabilities(pred, ANIMALS)
    assert got == pytest.approx(expected, abs=1e-4)


def _image_part(color: str, size: tuple[int, int]) -> ImagePart:
    return ImagePart(data=base64.b64encode(png(color, size)).decode(), media_type="image/png")


SCORING_JOBS = [
    # (turns: (role, text, image color, image size) ..., field): one plain question, one longer with
    # another label set, and a few-shot prompt whose two demo images have other sizes and aspect ratios
    ([("user", "Is it a cat?", "red", (48, 40))], ClassifierField("label", ANIMALS)),
    ([("user", "A much longer question about which colour this picture shows, please.", "blue", (100, 30))],
     ClassifierField("tone", ("warm", "cold"))),
    ([("user", "Which animal?", "green", (20, 90)), ("assistant", '{"label":"dog"}', None, None),
      ("user", "Which animal?", "yellow", (64, 64)), ("assistant", '{"label":"bird"}', None, None),
      ("user", "Which animal?", "white", (30, 50))], ClassifierField("label", ANIMALS)),
]


def test_prefix_reused_scores_equal_unpadded_per_label_forwards(lm):
    """Prompts of different lengths, label sets, demo images and image sizes share one pass; each score
    equals a plain full-sequence forward (the label-probability contract, for every family)."""
    engine = lm.engine
    prompts, images = [], []
    for turns, _ in SCORING_JOBS:
        messages = tuple(
            Message.user([TextPart(text), _image_part(color, size)]) if role == "user" else Message.assistant(text)
            for role, text, color, size in turns)
        prompts.append(engine.render_prompt(chat_input_from_request(Request(model=lm.model,
                                                                                       messages=messages))))
        images.append([Image.open(io.BytesIO(png(color, size))) for role, _, color, size in turns if color])
    candidates = [candidate_tokens(engine.tokenizer, field) for _, field in SCORING_JOBS]
    batch = engine._encode(prompts, images)
    assert batch["attention_mask"].sum(1).tolist()[0] < batch["input_ids"].shape[1]  # left padding is exercised
    inputs = scoring_inputs(engine.family, batch)
    got = score_candidates(engine.model, inputs, candidates, pad_token_id=engine.pad_token_id, family=engine.family)
    for prompt, image_list, cands, scores in zip(prompts, images, candidates, got, strict=True):
        want = unpadded_answer_scores(engine, prompt, image_list, cands.tokens, cands.shared)
        assert scores == pytest.approx(want, abs=1e-4)


def test_prompt_carries_the_template_special_tokens_once(lm):
    """The engine encodes what the chat template rendered, adding no BOS of its own (Gemma 3's tokenizer would)."""
    engine = lm.engine
    chat = chat_input_from_request(Request(model=lm.model, messages=(
        Message.user([TextPart("Which?"), _image_part("red", (48, 40))]),)))
    prompt = engine.render_prompt(chat)
    ids = engine._encode([prompt], [chat.images])["input_ids"][0].tolist()
    bos = engine.tokenizer.bos_token_id
    assert bos is None or ids[:2] != [bos, bos]
    if bos is not None and prompt.startswith(engine.tokenizer.bos_token):
        assert ids[0] == bos


def test_text_only_scoring_after_images_equals_plain_forwards(lm):
    """A batch with no image after batches with images: nothing an image prompt left behind (Qwen's
    rope deltas) may leak into it."""
    engine = lm.engine
    predict(lm, Single, image=image("red"))
    prompts = [engine.render_prompt(chat_input_from_request(Request(model=lm.model, messages=(
        Message.user(text),)))) for text in ("Cat?", "Which animal is meant by the word 'purr', please?")]
    candidates = [candidate_tokens(engine.tokenizer, ClassifierField("label", ANIMALS))] * 2
    batch = engine._encode(prompts, [[], []])
    got = score_candidates(engine.model, scoring_inputs(engine.family, batch), candidates,
                           pad_token_id=engine.pad_token_id, family=engine.family)
    for prompt, cands, scores in zip(prompts, candidates, got, strict=True):
        assert scores == pytest.approx(unpadded_answer_scores(engine, prompt, [], cands.tokens, cands.shared),
                                       abs=1e-4)


def test_reasoning_then_answer_validates(lm):
    """Reasoning first, then the label, in schema order (a random model's reasoning is bounded by the
    schema's maxLength, else it would write until max_tokens)."""
    schema = {"type": "object", "properties": {"reasoning": {"type": "string", "maxLength": 24},
                                               "label": {"type": "string", "enum": list(ANIMALS)}},
              "required": ["reasoning", "label"], "additionalProperties": False}
    for color in COLORS[:2]:
        request = Request(model=lm.model, messages=(Message.user([TextPart("Think, then answer."),
                                                                  _image_part(color, (48, 40))]),),
                          config=Config(response_format={"type": "json_schema", "schema": schema}, max_tokens=96))
        # strict=False: xgrammar's JSON strings admit raw control characters (tabs ...); DSPy's parser does too
        answer = json.loads(lm(request).text, strict=False)
        assert list(answer) == ["reasoning", "label"] and answer["label"] in ANIMALS
        assert isinstance(answer["reasoning"], str) and len(answer["reasoning"]) <= 24


def test_free_text_answers_are_recorded_as_text(lm, tiny_model_dir):
    """structured_generation off: the model writes free text, a label outside the set is invalid, and
    the record keeps the text itself (never the engine's output object), even when it is empty."""
    free = create_lm(lm.engine.settings["model"], max_new_tokens=6, structured=False, cache=False)
    program = Classify(Single, adapter=create_adapter("compact", structured=False))
    try:
        with dspy.context(lm=free):
            preds = [program(image=image(color)) for color in COLORS[:3]]
    finally:
        free.engine.close()
    for pred in preds:
        assert isinstance(pred.raw_output, str) and "logprobs" not in pred.raw_output
        assert pred.label in ANIMALS if pred.valid else pred.label is None


def test_explicit_request_carries_the_measured_distribution(lm):
    schema = {"type": "object", "properties": {"label": {"type": "string", "enum": list(ANIMALS)}},
              "required": ["label"], "additionalProperties": False}
    request = Request(model=lm.model, messages=(Message.user([TextPart("What is it?"), ImagePart(
        data=base64.b64encode(png("red")).decode(), media_type="image/png")]),),
        config=Config(response_format={"type": "json_schema", "schema": schema}))
    response = lm(request)
    probabilities = response_probabilities(response)["label"]
    assert set(probabilities) == set(ANIMALS) and math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0


def test_raw_text_without_schema(lm):
    before = lm.engine.stats.generate_calls
    response = lm(Request(model=lm.model, messages=(Message.user("Say a word."),), config=Config(max_tokens=5)))
    assert isinstance(response.text, str)
    assert response.usage.output_tokens <= 5 and response.usage.input_tokens > 0
    assert response.finish_reason in ("stop", "length")
    assert lm.engine.stats.generate_calls == before + 1


def test_concurrent_calls_are_batched_and_each_gets_its_own_answer(lm):
    sequential = [prediction_probabilities(predict(lm, Single, image=image(c)), ANIMALS) for c in COLORS]
    sequential_multi = [predict(lm, Multi, image=image(c)).label for c in COLORS]
    batches_before = len(lm.engine.stats.batch_sizes)
    devset = [dspy.Example(image=image(c), label="cat").with_inputs("image") for c in COLORS]
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        result = dspy.Evaluate(devset=devset, metric=lambda ex, pred, trace=None: pred.label == ex.label,
                               num_threads=8, display_progress=False)(dspy.Predict(Single))
    with ThreadPoolExecutor(8) as pool:  # plain threads: no inherited dspy.context
        concurrent_multi = list(pool.map(lambda c: predict(lm, Multi, image=image(c)).label, COLORS))
    concurrent = [prediction_probabilities(pred, ANIMALS) for _, pred, _ in result.results]
    for got, want in zip(concurrent, sequential, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert concurrent_multi == sequential_multi
    assert max(lm.engine.stats.batch_sizes[batches_before:]) > 1


def test_rows_with_different_schemas_share_a_batch(lm):
    batches_before = len(lm.engine.stats.batch_sizes)
    jobs = [(Multi if i % 2 else Fields, COLORS[i]) for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        preds = list(pool.map(lambda job: predict(lm, job[0], image=image(job[1])), jobs))
    for (signature, _), pred in zip(jobs, preds, strict=True):
        if signature is Multi:
            assert set(pred.label) <= set(ANIMALS)
        else:
            assert pred.animal in ANIMALS and isinstance(pred.scene, Scene)
    assert max(lm.engine.stats.batch_sizes[batches_before:]) > 1


def test_one_bad_request_fails_only_its_caller(lm):
    good = Request(model=lm.model, messages=(Message.user([TextPart("Hi"), ImagePart(
        data=base64.b64encode(png("red")).decode(), media_type="image/png")]),), config=Config(max_tokens=3))
    bad = Request(model=lm.model, messages=(Message.user([TextPart("Hi"), ImagePart(
        data=base64.b64encode(b"not an image").decode(), media_type="image/png")]),), config=Config(max_tokens=3))
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(lm, r) for r in (good, bad, good, good)]
    assert all(futures[i].result().usage.input_tokens > 0 for i in (0, 2, 3))
    with pytest.raises(Exception, match="image"):
        futures[1].result()


def test_same_request_twice_is_one_generate(tiny_lfm2_vl_dir, monkeypatch):
    monkeypatch.setattr(dspy, "cache", Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None))
    lm = create_lm(str(tiny_lfm2_vl_dir), max_new_tokens=16)
    try:
        first = predict(lm, Multi, image=image("red"))
        second = predict(lm, Multi, image=image("red"))
        assert first.label == second.label
        assert lm.engine.stats.requests == 1 and lm.engine.stats.generate_calls == 1
        predict(lm, Multi, image=image("blue"))
        assert lm.engine.stats.requests == 2
    finally:
        lm.engine.close()


def test_model_string_names_weights_and_settings(lm):
    engine = lm.engine
    assert lm.model == engine.model_string
    assert engine.source.fingerprint in lm.model and ":float32:cpu" in lm.model


def test_unstructured_lm_sends_no_schema(tiny_idefics3_dir):
    lm = create_lm(str(tiny_idefics3_dir), max_new_tokens=8, structured=False, cache=False)
    try:
        with pytest.raises(AdapterParseError):  # random free text is not a JSON answer
            predict(lm, Single, image=image("red"))
        assert "response_format" not in lm.history[-1]["kwargs"]
        assert lm.engine.stats.score_calls == 0 and lm.engine.stats.generate_calls >= 1
    finally:
        lm.engine.close()


def test_lm_state_round_trip_rebuilds_the_engine(lm):
    state = lm.dump_state()
    assert state["engine"]["class"] == "vlmopt.serving.transformers_engine:TransformersEngine"
    json.dumps(state)
    loaded = dspy.LM.load_state(state, allow_custom_lm_class=True)
    try:
        assert isinstance(loaded.engine, TransformersEngine) and loaded.model == lm.model
        assert predict(loaded, Single, image=image("red")).label == predict(lm, Single, image=image("red")).label
    finally:
        loaded.engine.close()


def test_unreachable_hub_id_fails_fast_with_a_way_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachableError, match=r"unreachable.*model\.id"):
        create_lm("LiquidAI/LFM2-VL-450M")


# --- shared-prefix reuse (serving.prefix_cache): the same answers as whole prompts, on every family ---------

SPLITS_REFUSED_WITH_IMAGE_DEMOS = {family.tiny_arch for family in FAMILIES if family.prefix_reuse_limit}
"""Families whose few-shot prefixes fail the whole-prompt check and run whole (the registry's
``prefix_reuse_limit``: LLaVA-OneVision expands an image differently when other images share the prompt)."""


def _requests(lm: dspy.LM, signature, demos: list[dspy.Example], queries: list[dspy.Image]) -> list[Request]:
    """The requests DSPy hands the engine for a program with ``demos``, one per query image (recorded
    at ``engine.complete``: messages and settings, response_format included)."""
    program = dspy.Predict(signature)
    program.demos = demos
    engine, requests = lm.engine, []
    complete = engine.complete

    def record(request: Request):
        requests.append(request)
        return complete(request)

    engine.complete = record
    try:
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            for query in queries:
                program(image=query)
    finally:
        del engine.complete
    return requests


def _answers(engine, requests: list[Request], *, reuse: bool) -> list[tuple]:
    """Run the requests as one batch on the worker's code path, with their prompts split or whole."""
    jobs = [engine._prepare(request) for request in requests]
    for job in jobs:
        assert job.split is not None or not engine.family.prefix_reuse  # every family that reuses splits these
        job.split = job.split if reuse else None
    answers = []
    for job, result in zip(jobs, engine._run_batch(jobs), strict=True):
        part = result.parts[0]
        if job.classifier is not None:
            answers.append((part.value, part.probabilities))
        else:
            assert job.grammar is not None  # multi-field: a grammar-constrained generation
            answers.append((part.text, None))
    return answers


def _sized(color: str, size: tuple[int, int]) -> dspy.Image:
    return dspy.Image("data:image/png;base64," + base64.b64encode(png(color, size)).decode())


def test_prefix_reuse_answers_as_whole_prompts_do(lm):
    """Labels and probabilities (1e-4) of few-shot and zero-shot classifiers, and generated multi-field
    answers, are the same with the shared prefix run once as with every prompt run whole; queries of
    two image sizes exercise the batching by suffix shape."""
    engine = lm.engine
    demos = [dspy.Example(image=_sized(color, size), label=label).with_inputs("image")
             for color, size, label in (("red", (40, 40), "cat"), ("blue", (30, 60), "dog"))]
    queries = [_sized("green", (48, 40)), _sized("yellow", (48, 40)), _sized("white", (64, 20))]
    field_demo = [dspy.Example(image=_sized("red", (48, 40)), animal="cat", color="red",
                               scene=Scene(place="indoor", count=1)).with_inputs("image")]
    requests = (_requests(lm, Single, demos, queries) + _requests(lm, Single, [], queries[:2])
                + _requests(lm, Fields, field_demo, queries[:2]))
    before = copy.copy(engine.prefixes.stats) if engine.prefixes is not None else None
    reused, whole = _answers(engine, requests, reuse=True), _answers(engine, requests, reuse=False)
    for (value, probabilities), (want_value, want_probabilities) in zip(reused, whole, strict=True):
        assert value == want_value
        if want_probabilities is not None:
            assert probabilities["label"] == pytest.approx(want_probabilities["label"], abs=1e-4)
    if engine.prefixes is None:
        assert not engine.family.prefix_reuse  # PaliGemma: nothing of its prompt is shared
        return
    stats = engine.prefixes.stats
    ran_on_prefix = (stats.hits + stats.misses) - (before.hits + before.misses)
    refused = stats.refused - before.refused
    if engine.family.tiny_arch in SPLITS_REFUSED_WITH_IMAGE_DEMOS:
        assert refused == 5 and ran_on_prefix == 2  # the image-demo programs ran whole; zero-shot did not
    else:
        assert refused == 0 and ran_on_prefix == len(requests)
        assert stats.hits - before.hits >= len(requests) - 3  # one build per program, then hits


def test_a_changed_demo_or_instruction_is_another_prefix(lm):
    """The cache never serves another program's prefix: one changed demo image, or another instruction, is a miss."""
    engine = lm.engine
    if engine.prefixes is None or engine.family.tiny_arch in SPLITS_REFUSED_WITH_IMAGE_DEMOS:
        pytest.skip(f"{engine.family.name} runs few-shot prompts whole")
    query = [_sized("green", (48, 40))]

    def misses_for(signature, demo_color: str) -> int:
        demo = [dspy.Example(image=_sized(demo_color, (40, 40)), label="cat").with_inputs("image")]
        before = engine.prefixes.stats.misses
        _answers(engine, _requests(lm, signature, demo, query), reuse=True)
        return engine.prefixes.stats.misses - before

    misses_for(Single, "orange")
    assert misses_for(Single, "orange") == 0  # the same program: its prefix is cached
    assert misses_for(Single, "purple") == 1  # one demo image changed
    assert misses_for(Single.with_instructions("Name the animal you see."), "orange") == 1


def test_prefix_cache_keeps_to_its_budget(lm):
    """Under a budget that holds one prefix, three programs in turn evict each other, and answers stay exact."""
    engine = lm.engine
    if engine.prefixes is None:
        pytest.skip("PaliGemma never splits its prompt")
    query = [_sized("green", (48, 40))]
    if engine.family.tiny_arch in SPLITS_REFUSED_WITH_IMAGE_DEMOS:  # zero-shot programs, another instruction each
        programs = [_requests(lm, Single.with_instructions(f"Which animal is this, {n}?"), [], query)
                    for n in range(3)]
    else:  # one demo image each (Gemma 3's template folds the instruction into the query turn of a zero-shot prompt)
        programs = [_requests(lm, Single, [dspy.Example(image=_sized(color, (40, 40)), label="cat").with_inputs(
            "image")], query) for color in ("red", "blue", "black")]
    largest = 0
    saved = engine.prefixes
    try:
        for requests in programs:  # measure one prefix with room to spare
            engine.prefixes = PrefixCache(2**30)
            _answers(engine, requests, reuse=True)
            largest = max(largest, engine.prefixes.nbytes)
        engine.prefixes = PrefixCache(int(largest * 1.5))
        for requests in programs + programs:
            (got,), (want,) = _answers(engine, requests, reuse=True), _answers(engine, requests, reuse=False)
            assert got[1]["label"] == pytest.approx(want[1]["label"], abs=1e-4)
            assert engine.prefixes.nbytes <= engine.prefixes.budget_bytes and len(engine.prefixes) == 1
        assert engine.prefixes.stats.evictions == 5 and engine.prefixes.stats.hits == 0
    finally:
        engine.prefixes = saved
