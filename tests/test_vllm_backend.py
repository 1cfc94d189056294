"""The vLLM path end to end: a real vLLM (CPU) server on the tiny Idefics3 model, DSPy through
`create_openai_lm`, and the launcher. The model has random weights, so the tests check what the
server guarantees whatever the weights: schema-constrained typed answers, the request that
reaches the server, log-probs, compact JSON, prefix caching, and clean errors."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from typing import Literal

import dspy
import pydantic
import pytest
from PIL import Image

from vlmopt.serving.openai_lm import create_openai_lm
from vlmopt.serving.vllm_server import VLLMServer, VLLMServerError, free_port

ANIMALS = ("cat", "dog", "bird")
COLORS = ("red", "green", "blue")
SHAPES = ("circle", "square", "triangle")
END_OF_UTTERANCE = "<end_of_utterance>"


class ClassifyAnimal(dspy.Signature):
    """Classify the animal in the image."""

    image: dspy.Image = dspy.InputField()
    label: Literal[ANIMALS] = dspy.OutputField()


class AnimalTags(pydantic.BaseModel):
    """A bounded label list. DSPy drops constraints written on a bare `list[...]` field's annotation,
    and an unbounded list lets a weak model repeat one label until max_tokens (measured here: the
    tiny model emits "cat" until truncation); inside a model the bound reaches the schema as maxItems."""

    labels: list[Literal[ANIMALS]] = pydantic.Field(max_length=len(ANIMALS))


class TagAnimals(dspy.Signature):
    """List every animal visible in the image."""

    image: dspy.Image = dspy.InputField()
    tags: AnimalTags = dspy.OutputField()


class DescribeShape(dspy.Signature):
    """Name the colour and the shape in the image."""

    image: dspy.Image = dspy.InputField()
    color: Literal[COLORS] = dspy.OutputField()
    shape: Literal[SHAPES] = dspy.OutputField()


def _images(n: int = 4) -> list[dspy.Image]:
    """Distinct small images (solid colours), enough to vary the random model's answers."""
    palette = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (240, 220, 30), (20, 20, 20)]
    return [dspy.Image(Image.new("RGB", (72, 56), palette[i % len(palette)])) for i in range(n)]


def _lm(endpoint, base_url: str | None = None, **kwargs) -> dspy.LM:
    return create_openai_lm(base_url or endpoint.base_url, endpoint.model, max_tokens=96, cache=False, **kwargs)


def _predict(lm: dspy.LM, signature: type[dspy.Signature], image: dspy.Image) -> dspy.Prediction:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        return dspy.Predict(signature)(image=image)


def _generated_text(prediction: dspy.Prediction) -> str:
    """The exact text the server generated, rebuilt from its per-token log-probs."""
    return "".join(entry["token"] for entry in prediction.logprobs["content"]).removesuffix(END_OF_UTTERANCE)


def _prefix_cache_hits(root_url: str) -> float:
    with urllib.request.urlopen(f"{root_url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    return sum(float(value) for value in re.findall(r"^vllm:prefix_cache_hits_total\{[^}]*\} (\S+)$", metrics, re.M))


@pytest.mark.vllm
@pytest.mark.slow
def test_single_label_is_always_one_of_the_literals(vllm_server):
    lm = _lm(vllm_server)
    for image in _images():
        prediction = _predict(lm, ClassifyAnimal, image)
        assert prediction.label in ANIMALS
        assert json.loads(_generated_text(prediction)) == {"label": prediction.label}


@pytest.mark.vllm
@pytest.mark.slow
def test_multi_label_is_a_list_of_literals(vllm_server):
    lm = _lm(vllm_server)
    for image in _images():
        prediction = _predict(lm, TagAnimals, image)
        labels = prediction.tags.labels
        assert isinstance(labels, list)
        assert set(labels) <= set(ANIMALS)
        assert len(labels) <= len(ANIMALS)
        assert json.loads(_generated_text(prediction)) == {"tags": {"labels": labels}}


@pytest.mark.vllm
@pytest.mark.slow
def test_multi_field_answers_are_valid_and_compact(vllm_server):
    lm = _lm(vllm_server)
    for image in _images():
        prediction = _predict(lm, DescribeShape, image)
        assert prediction.color in COLORS
        assert prediction.shape in SHAPES
        generated = _generated_text(prediction)
        # The launcher pins JSON whitespace: a weak model cannot pad the answer with newlines.
        assert generated == json.dumps({"color": prediction.color, "shape": prediction.shape}, separators=(",", ":"))


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize(
    ("signature", "fields"),
    [(ClassifyAnimal, ["label"]), (TagAnimals, ["tags"]), (DescribeShape, ["color", "shape"])],
)
def test_json_schema_reaches_the_server(vllm_server, recording_proxy, signature, fields):
    """DSPy must send response_format json_schema (not loose json_object mode) to a custom URL."""
    lm = _lm(vllm_server, base_url=recording_proxy.base_url)
    _predict(lm, signature, _images(1)[0])

    (request,) = recording_proxy.requests
    assert request["path"] == "/v1/chat/completions"
    body = request["body"]
    assert body["model"] == vllm_server.model
    assert body["temperature"] == 0
    assert body["logprobs"] is True
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]["schema"]
    assert schema["required"] == fields
    enums = json.dumps(schema)
    for value in (ANIMALS if signature is not DescribeShape else COLORS + SHAPES):
        assert f'"{value}"' in enums
    user_parts = [part for message in body["messages"] if message["role"] == "user" for part in message["content"]]
    images = [part["image_url"]["url"] for part in user_parts if part["type"] == "image_url"]
    assert any(url.startswith("data:image/") for url in images)


@pytest.mark.vllm
@pytest.mark.slow
def test_logprobs_come_back_with_the_prediction(vllm_server):
    prediction = _predict(_lm(vllm_server), ClassifyAnimal, _images(1)[0])
    content = prediction.logprobs["content"]
    assert content, "no token log-probs returned"
    assert all(isinstance(entry["logprob"], float) and entry["logprob"] <= 0.0 for entry in content)
    assert _generated_text(prediction).startswith('{"label":')


@pytest.mark.vllm
@pytest.mark.slow
def test_api_key_reaches_the_server_but_is_never_stored(vllm_server, recording_proxy, monkeypatch):
    secret = "sk-test-7f3a9c"
    monkeypatch.setenv("VLMOPT_TEST_API_KEY", secret)
    lm = _lm(vllm_server, base_url=recording_proxy.base_url, api_key_env="VLMOPT_TEST_API_KEY")
    _predict(lm, ClassifyAnimal, _images(1)[0])

    assert recording_proxy.requests[0]["headers"]["Authorization"] == f"Bearer {secret}"
    assert secret not in lm.model
    assert secret not in json.dumps(lm.dump_state())
    assert secret not in repr(lm.history)


@pytest.mark.vllm
@pytest.mark.slow
def test_prefix_cache_serves_the_shared_prompt(vllm_server):
    """Same instructions, different images: the second request reuses the cached prefix."""
    lm = _lm(vllm_server)
    before = _prefix_cache_hits(vllm_server.root_url)
    for image in _images(2):
        _predict(lm, ClassifyAnimal, image)
    assert _prefix_cache_hits(vllm_server.root_url) > before


def test_unreachable_server_is_a_clear_error_naming_the_address():
    port = free_port()
    lm = create_openai_lm(f"http://127.0.0.1:{port}/v1", "tiny", num_retries=0, timeout=5, cache=False)
    with pytest.raises(dspy.LMError, match=rf"127\.0\.0\.1:{port}"):
        _predict(lm, ClassifyAnimal, _images(1)[0])


def test_missing_api_key_variable_is_named(monkeypatch):
    monkeypatch.delenv("VLMOPT_ABSENT_KEY", raising=False)
    with pytest.raises(ValueError, match="VLMOPT_ABSENT_KEY"):
        create_openai_lm("http://127.0.0.1:9/v1", "tiny", api_key_env="VLMOPT_ABSENT_KEY")


def test_launcher_reports_a_server_that_dies_with_its_log(tmp_path):
    """An interpreter without vLLM: the error says so, and how to get one, before anything starts."""
    server = VLLMServer("some-model", python=sys.executable, log_path=tmp_path / "server.log", startup_timeout=60)
    with pytest.raises(VLLMServerError, match="has no vLLM.*setup_vllm_venv.sh"):
        server.start()
    assert server.pid is None
    assert not server.is_healthy()
