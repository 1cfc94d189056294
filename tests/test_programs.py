"""Programs: typed signatures, the compact adapter's prompt, invalid answers kept with raw text.

The model edge is the scripted test double (``vlmopt.testing.scripted_engine``): it sees the real
request DSPy builds and answers what each test needs (a random-weight VLM cannot say "pug").
"""

import base64
import io
from typing import Literal, get_args

import dspy
import pytest
from PIL import Image

from vlmopt.config import TaskSpec
from vlmopt.programs import create_program, make_signature
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm


def image(color=(255, 0, 0)) -> dspy.Image:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return dspy.Image("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())


def run(program, answer, img=None):
    seen = []

    def script(call):
        seen.append(call)
        return answer

    with dspy.context(lm=scripted_lm(ScriptedEngine(script))):
        pred = program(image=img or image())
    return pred, seen[-1]


TASK = dict(labels=["cat", "dog"], system_prompt="You are a vet.", user_prompt="Which animal is this?")


def test_signature_types_follow_the_output_kind():
    single = make_signature(TaskSpec(**TASK))
    assert get_args(single.output_fields["label"].annotation) == ("cat", "dog")
    assert single.instructions == "You are a vet."
    assert single.input_fields["image"].json_schema_extra["desc"] == "Which animal is this?"
    multi = make_signature(TaskSpec(output="multi_label", labels=["a", "b"]))
    assert multi.output_fields["label"].annotation == list[Literal["a", "b"]]
    fields = make_signature(TaskSpec(output="multi_field", fields={"age": ["young", "old"], "mood": ["ok", "sad"]}))
    assert list(fields.output_fields) == ["age", "mood"]
    assert get_args(fields.output_fields["mood"].annotation) == ("ok", "sad")


def test_detected_labels_override_and_missing_labels_are_an_error():
    assert get_args(make_signature(TaskSpec(), labels=["x", "y"]).output_fields["label"].annotation) == ("x", "y")
    with pytest.raises(ValueError, match="no labels"):
        make_signature(TaskSpec())


def test_compact_prompt_is_instruction_demos_image_only():
    program = create_program(TaskSpec(**TASK))
    program.predict.demos = [dspy.Example(image=image((0, 0, 255)), label="dog").with_inputs("image")]
    pred, call = run(program, '{"label":"cat"}')
    assert pred.label == "cat" and pred.valid and pred.raw_output == '{"label":"cat"}'
    assert call.system == "You are a vet."
    roles = [role for role, _, _ in call.turns]
    assert roles == ["user", "assistant", "user"]
    demo_user, demo_answer, query = call.turns
    assert demo_user[1].strip() == "Which animal is this?" and len(demo_user[2]) == 1
    assert demo_answer[1] == '{"label":"dog"}'
    assert query[1].strip() == "Which animal is this?" and call.query_image.getpixel((0, 0)) == (255, 0, 0)
    assert "[[ ##" not in call.system + query[1]
    assert call.response_format["type"] == "json_schema"
    assert call.response_format["schema"]["properties"]["label"]["enum"] == ["cat", "dog"]


def test_free_text_outside_label_set_is_invalid_with_raw_text():
    program = create_program(TaskSpec(**TASK, structured_generation=False))
    pred, call = run(program, "pug")
    assert call.response_format is None
    assert pred.valid is False and pred.label is None and pred.raw_output == "pug"
    pred, _ = run(program, " dog\n")
    assert pred.valid and pred.label == "dog" and pred.label_normalized is False


def test_normalisation_is_opt_in_and_reported():
    strict = create_program(TaskSpec(**TASK, structured_generation=False))
    assert run(strict, "Dogs.")[0].valid is False
    lenient = create_program(TaskSpec(**TASK, structured_generation=False, normalize_labels=True))
    pred, _ = run(lenient, "Dogs.")
    assert pred.valid and pred.label == "dog" and pred.label_normalized is True and pred.raw_output == "Dogs."
    assert run(lenient, "pug")[0].valid is False


def test_free_text_demo_answers_are_bare_labels():
    program = create_program(TaskSpec(**TASK, structured_generation=False))
    program.predict.demos = [dspy.Example(image=image(), label="cat").with_inputs("image")]
    _, call = run(program, "cat")
    assert call.turns[1] == ("assistant", "cat", [])


def test_multi_label_and_multi_field_parse_and_schema():
    multi = create_program(TaskSpec(output="multi_label", labels=["red", "round", "big"]))
    pred, call = run(multi, '{"label":["red","big"]}')
    assert pred.label == ["red", "big"]
    assert call.response_format["schema"]["properties"]["label"]["type"] == "array"
    free = create_program(TaskSpec(output="multi_label", labels=["red", "round"], structured_generation=False))
    assert run(free, "red, round")[0].label == ["red", "round"]
    assert run(free, "red, square")[0].valid is False
    fields = create_program(TaskSpec(output="multi_field", fields={"age": ["young", "old"], "mood": ["ok", "sad"]}))
    pred, call = run(fields, '{"age":"old","mood":"sad"}')
    assert (pred.age, pred.mood, pred.valid) == ("old", "sad", True)
    assert set(call.response_format["schema"]["required"]) == {"age", "mood"}
    bad, _ = run(fields, '{"age":"ancient","mood":"sad"}')
    assert bad.valid is False and bad.age is None and "ancient" in bad.raw_output


def test_reasoning_comes_first_and_is_kept():
    program = create_program(TaskSpec(**TASK, reasoning=True))
    pred, call = run(program, '{"reasoning":"pointy ears","label":"cat"}')
    assert list(call.response_format["schema"]["properties"]) == ["reasoning", "label"]
    assert pred.reasoning == "pointy ears" and pred.label == "cat"
    assert program.signature.instructions == "You are a vet."


def test_dspy_chat_adapter_does_not_retry_invalid_answers_through_json():
    program = create_program(TaskSpec(**TASK, structured_generation=False, adapter="dspy"))
    calls = []

    def script(call):
        calls.append(call)
        return "[[ ## label ## ]]\npug\n\n[[ ## completed ## ]]"

    with dspy.context(lm=scripted_lm(ScriptedEngine(script))):
        pred = program(image=image())
    assert len(calls) == 1 and pred.valid is False and "pug" in pred.raw_output
    assert "[[ ## image ## ]]" in calls[0].query_text


@pytest.mark.parametrize("adapter", ["compact", "dspy"])
def test_an_empty_free_text_answer_is_recorded_as_empty_text(adapter):
    """A model that writes only special tokens decodes to "": the record keeps "", not the output object's repr."""
    program = create_program(TaskSpec(**TASK, structured_generation=False, adapter=adapter))
    pred, _ = run(program, "")
    assert pred.valid is False and pred.label is None
    assert pred.raw_output == ""
