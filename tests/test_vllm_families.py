"""The vLLM half of the model-family conformance matrix: every family the CPU vLLM build serves.

One real vLLM server per family (its tiny random-weight build), started with the flags
``vlmopt serve`` uses and its context length derived from the model. Each family must give
schema-valid typed answers (json_schema structured outputs), label probabilities that agree with
the in-process engine's, multi-field answers, and few-shot prompts with several demo images.
Families vLLM cannot serve are named, with the reason, in the registry and the README table.
"""

from __future__ import annotations

import json
from typing import Literal

import dspy
import pytest
from PIL import Image

from fixtures_models import vllm_archs
from fixtures_vllm import FAST_START_ARGS
from vlmopt.config import TaskSpec
from vlmopt.programs import create_program
from vlmopt.programs.confidence import label_confidence
from vlmopt.serving.openai_lm import create_openai_lm
from vlmopt.serving.transformers_engine import create_lm as create_in_process_lm
from vlmopt.serving.vllm_probabilities import create_vllm_lm
from vlmopt.serving.vllm_server import VLLMServer, default_max_model_len

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SHAPES = ["circle", "square", "triangle"]
COLORS = ("red", "green", "blue")
PROBABILITY_TOLERANCE = 0.02
"""|p_vllm - p_in_process| per label; see test_vllm_e2e.PROBABILITY_TOLERANCE for the budget."""


class DescribeShape(dspy.Signature):
    """Name the colour and the shape in the image."""

    image: dspy.Image = dspy.InputField()
    color: Literal[COLORS] = dspy.OutputField()
    shape: Literal[tuple(SHAPES)] = dspy.OutputField()


@pytest.fixture(scope="module")
def family_server(request, vllm_python, tiny_model_dir, tmp_path_factory):
    """(server, model dir) for one family (each test's indirect parameter); one server per family at a time.

    Idefics3 reuses the session's server (``vllm_server``, the same tiny build) instead of a second one.
    """
    model_dir = tiny_model_dir(request.param)
    if request.param == "idefics3":
        yield request.getfixturevalue("vllm_server").server, model_dir
        return
    server = VLLMServer(
        str(model_dir), python=vllm_python, served_model_name=f"tiny-{request.param}",
        max_model_len=default_max_model_len(str(model_dir)), limit_mm_per_prompt={"image": 4},
        extra_args=FAST_START_ARGS,
        log_path=tmp_path_factory.mktemp(f"vllm-{request.param}") / "server.log",
    )
    with server:
        yield server, model_dir


def _images(sizes=((64, 64), (48, 40), (100, 30), (20, 90))) -> list[dspy.Image]:
    palette = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (240, 220, 30)]
    return [dspy.Image(Image.new("RGB", size, rgb)) for rgb, size in zip(palette, sizes, strict=True)]


def _program():
    return create_program(TaskSpec(labels=SHAPES), SHAPES)


@pytest.mark.parametrize("family_server", vllm_archs("json_schema"), indirect=True)
def test_single_label_is_one_of_the_labels(family_server):
    server, _ = family_server
    lm = create_openai_lm(server.base_url, server.served_model_name, max_tokens=32, cache=False)
    program = _program()
    for image in _images():
        with dspy.context(lm=lm):
            prediction = program(image=image)
        assert prediction.valid and prediction.label in SHAPES
        assert json.loads(prediction.raw_output) == {"label": prediction.label}  # compact JSON, one field


@pytest.mark.parametrize("family_server", vllm_archs("probabilities"), indirect=True)
def test_label_probabilities_agree_with_in_process(family_server):
    server, model_dir = family_server
    in_process = create_in_process_lm(str(model_dir), cache=False)
    served = create_vllm_lm(server.base_url, server.served_model_name, max_tokens=32, cache=False)
    program = _program()
    clear_cut = 0
    try:
        for image in _images():
            with dspy.context(lm=in_process):
                expected, _ = label_confidence(program(image=image))
            with dspy.context(lm=served):
                probabilities, confidence = label_confidence(program(image=image))
            assert set(probabilities) == set(SHAPES) and sum(probabilities.values()) == pytest.approx(1.0)
            for label in SHAPES:
                assert probabilities[label] == pytest.approx(expected[label], abs=PROBABILITY_TOLERANCE), (
                    label, probabilities, expected)
            first, second = sorted(expected.values(), reverse=True)[:2]
            if first - second > 2 * PROBABILITY_TOLERANCE:  # a near-flat distribution agrees with anything
                assert max(probabilities, key=probabilities.get) == max(expected, key=expected.get)
                clear_cut += 1
        assert clear_cut >= 1, "no image gave the random model a clear-cut answer to compare"
    finally:
        in_process.engine.close()


@pytest.mark.parametrize("family_server", vllm_archs("multi_field"), indirect=True)
def test_multi_field_answers_validate(family_server):
    server, _ = family_server
    lm = create_openai_lm(server.base_url, server.served_model_name, max_tokens=48, cache=False)
    for image in _images()[:2]:
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            prediction = dspy.Predict(DescribeShape)(image=image)
        assert prediction.color in COLORS and prediction.shape in SHAPES


@pytest.mark.parametrize("family_server", vllm_archs("demos"), indirect=True)
def test_few_shot_demos_with_images(family_server):
    server, _ = family_server
    lm = create_openai_lm(server.base_url, server.served_model_name, max_tokens=32, cache=False)
    program = _program()
    demo_images = _images(sizes=((30, 50), (90, 40), (64, 64), (40, 40)))
    program.predict.demos = [dspy.Example(image=demo_images[0], label="circle"),
                             dspy.Example(image=demo_images[1], label="square")]
    with dspy.context(lm=lm):
        prediction = program(image=_images()[0])
    assert prediction.valid and prediction.label in SHAPES
    sent = lm.history[-1]["messages"]
    images = [part for message in sent if isinstance(message["content"], list)
              for part in message["content"] if part.get("type") == "image_url"]
    assert len(images) == 3  # two demos and the query, in one prompt
