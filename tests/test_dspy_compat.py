"""Every DSPy internal vlmopt relies on, pinned: one test per entry of ``vlmopt._dspy_compat``.

A DSPy upgrade that changes one of them fails here, under the entry's name, instead of somewhere
in a run. The last tests keep the seam the only door: no other module imports a private DSPy name,
reads a private DSPy attribute or overrides a private DSPy method the seam does not check.
"""

import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Literal

import dspy
import pytest
from dspy.lm15 import Config, Message, Request, request_from_openai_chat
from packaging.requirements import Requirement
from PIL import Image

import vlmopt
from dspy_boundary import package_sources, violations
from vlmopt import _dspy_compat as compat
from vlmopt.datasets.images import to_dspy_image
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm
from vlmopt.testing.scripted_writer import ScriptedWriter, call_text

ROOT = Path(__file__).resolve().parents[1]
PNG = to_dspy_image(Image.new("RGB", (4, 4), "red"), fmt="PNG").url
ANIMALS = ["cat", "dog", "bird"]
Animals = dspy.Signature(
    {"image": (dspy.Image, dspy.InputField()), "label": (Literal[tuple(ANIMALS)], dspy.OutputField())}, "Classify."
)
Letters = dspy.Signature({"text": (str, dspy.InputField()), "label": (Literal["a", "b"], dspy.OutputField())},
                         "Pick a label.")


def json_answer(label: str):
    return lambda call: json.dumps({"label": label})


# ─── the seam itself ───────────────────────────────────────────────────────────────────────────


def test_the_supported_range_is_the_package_pin_and_holds_for_the_installed_dspy():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in deps if Requirement(d).name == "dspy"]
    assert pin == Requirement(compat.SUPPORTED_DSPY)
    assert pin.specifier.contains(dspy.__version__)


def test_a_missing_internal_fails_with_one_message_naming_it_and_the_dspy_to_install():
    with pytest.raises(compat.DSPyCompatError) as missing:
        compat._private("dspy.adapters.json_adapter", "_renamed_in_a_later_dspy")
    assert str(missing.value) == (
        f"vlmopt {vlmopt.__version__} relies on DSPy's dspy.adapters.json_adapter._renamed_in_a_later_dspy "
        f"(DSPy 3.4); this DSPy ({dspy.__version__}) does not have it: install 'dspy>=3.4.1,<3.5'"
    )
    with pytest.raises(compat.DSPyCompatError, match=r"dspy\.nowhere\.x"):
        compat._private("dspy.nowhere", "x")


def test_a_dspy_without_a_vouched_hook_fails_at_import_in_one_place():
    code = "import dspy; del dspy.MIPROv2._propose_instructions; import vlmopt.programs"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"vlmopt._dspy_compat.DSPyCompatError: vlmopt {vlmopt.__version__} relies on DSPy's "
        "dspy.teleprompt.mipro_optimizer_v2.MIPROv2._propose_instructions(program, trainset, demo_candidates) "
        f"(DSPy 3.4); this DSPy ({dspy.__version__}) does not have it: install 'dspy>=3.4.1,<3.5'"
    )


def test_require_method_refuses_a_renamed_method_or_changed_parameters():
    compat.require_method(dspy.Adapter, "_call_postprocess", compat.ADAPTER_HOOKS["_call_postprocess"][1])
    with pytest.raises(compat.DSPyCompatError, match=r"dspy\.adapters\.base\.Adapter\._gone\(lm\)"):
        compat.require_method(dspy.Adapter, "_gone", ("lm",))
    with pytest.raises(compat.DSPyCompatError, match=r"JSONAdapter\._prepare_response_format\(signature, lm\)"):
        compat.require_method(dspy.JSONAdapter, "_prepare_response_format", ("signature", "lm"))


# ─── lm15 internals ────────────────────────────────────────────────────────────────────────────


def test_judgments_in_schema_reads_a_literal_output_as_one_choice_over_the_labels_in_order():
    (judgment,) = compat.judgments_in_schema(compat.structured_outputs_model(Animals).model_json_schema()).values()
    assert (judgment.name, judgment.kind, judgment.keys) == ("label", "choice", tuple(ANIMALS))
    free_text = dspy.Signature({"image": (dspy.Image, dspy.InputField()), "caption": (str, dspy.OutputField())})
    assert compat.judgments_in_schema(compat.structured_outputs_model(free_text).model_json_schema()) == {}


def test_normalize_logprobs_is_a_stable_softmax_over_the_keys():
    got = compat.normalize_logprobs({"cat": math.log(1.0), "dog": math.log(3.0)})
    assert got == pytest.approx({"cat": 0.25, "dog": 0.75})
    assert compat.normalize_logprobs({"cat": -2000.0, "dog": -2000.0 + math.log(3.0)}) == pytest.approx(got)


def test_validate_request_refuses_a_non_request_and_execution_controls_in_extensions():
    compat.validate_request(Request(model="m", messages=(Message.user("hi"),)))
    with pytest.raises(TypeError, match="dspy.lm15.Request"):
        compat.validate_request({"messages": []})
    with pytest.raises(ValueError, match=r"\['n', 'stream'\]"):
        compat.validate_request(Request(model="m", messages=(Message.user("hi"),),
                                        config=Config(extensions={"n": 2, "stream": True, "seed": 1})))


def test_openai_chat_messages_are_the_messages_a_request_was_built_from():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Which?"},
                                     {"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "assistant", "content": '{"label":"cat"}'},
        {"role": "user", "content": "And this one?"},
    ]
    assert compat.openai_chat_messages(request_from_openai_chat({"model": "m", "messages": messages})) == messages


# ─── adapters ──────────────────────────────────────────────────────────────────────────────────


def test_structured_outputs_model_is_the_schema_the_json_adapter_sends():
    assert compat.structured_outputs_model(Animals).model_json_schema() == {
        "type": "object",
        "title": "DSPyProgramOutputs",
        "properties": {"label": {"enum": ANIMALS, "title": "Label", "type": "string"}},
        "required": ["label"],
        "additionalProperties": False,
    }
    calls = []
    engine = ScriptedEngine(lambda call: calls.append(call) or '{"label": "cat"}')
    with dspy.context(lm=scripted_lm(engine), adapter=dspy.JSONAdapter()):
        dspy.Predict(Animals)(image=dspy.Image(PNG))
    assert calls[0].response_format["schema"] == compat.structured_outputs_model(Animals).model_json_schema()


def test_call_postprocess_gets_each_output_text_and_its_extra_keys_reach_the_prediction():
    seen = []

    class KeepText(dspy.JSONAdapter):
        def _call_postprocess(self, processed_signature, original_signature, outputs, lm, lm_kwargs):
            seen.append((processed_signature, original_signature, outputs))
            values = super()._call_postprocess(processed_signature, original_signature, outputs, lm, lm_kwargs)
            for value, output in zip(values, outputs, strict=True):
                value["raw"] = output["text"]
            return values

    with dspy.context(lm=scripted_lm(ScriptedEngine(json_answer("b"))), adapter=KeepText()):
        pred = dspy.Predict(Letters)(text="b")
    ((processed, original, outputs),) = seen
    assert processed.output_fields.keys() == original.output_fields.keys() == {"label"}
    assert outputs == [{"text": '{"label": "b"}', "logprobs": {"content": []}}]
    assert (pred.label, pred.raw, pred.logprobs) == ("b", '{"label": "b"}', {"content": []})


def test_prepare_response_format_is_where_the_json_adapter_sets_the_schema():
    class NoSchema(dspy.JSONAdapter):
        def _prepare_response_format(self, lm, lm_kwargs, signature):
            pass

    formats = []
    engine = ScriptedEngine(lambda call: formats.append(call.response_format) or '{"label": "a"}')
    for adapter in (dspy.JSONAdapter(), NoSchema()):
        with dspy.context(lm=scripted_lm(engine), adapter=adapter):
            dspy.Predict(Letters)(text="a")
    assert formats[0]["type"] == "json_schema" and formats[1] is None


def test_format_field_value_turns_an_image_into_the_marker_string_custom_type_parts_reads():
    text = compat.format_field_value(field_info=Animals.input_fields["image"], value=dspy.Image(PNG))
    assert compat.custom_type_parts(text) == [{"type": "image_url", "image_url": {"url": PNG}}]
    assert compat.format_field_value(field_info=Letters.input_fields["text"], value="plain") == "plain"


def test_serialize_for_json_gives_json_values_for_answers():
    assert compat.serialize_for_json({"label": "cat", "tags": ("a", "b")}) == {"label": "cat", "tags": ["a", "b"]}
    assert compat.serialize_for_json(dspy.Example) == str(dspy.Example)  # not JSON-able: its text


def test_custom_type_parts_reads_a_saved_demo_image_and_refuses_plain_text():
    predict = dspy.Predict(Animals)
    predict.demos = [dspy.Example(image=dspy.Image(PNG), label="cat").with_inputs("image")]
    saved = json.loads(json.dumps(predict.dump_state()))["demos"][0]["image"]
    assert compat.custom_type_parts(saved) == [{"type": "image_url", "image_url": {"url": PNG}}]
    assert compat.custom_type_parts("a caption") is None


# ─── decisions ─────────────────────────────────────────────────────────────────────────────────


def test_choice_decision_is_the_weighted_argmax_with_ties_to_the_unweighted_winner():
    probabilities = {"cat": 0.4, "dog": 0.5, "bird": 0.1}
    assert compat.choice_decision(Animals, "label", probabilities, {}) == "dog"
    assert compat.choice_decision(Animals, "label", probabilities, {"cat": 3.7}) == "cat"
    assert compat.choice_decision(Animals, "label", probabilities, {"cat": 1.25}) == "dog"  # 0.5 each: a tie
    with pytest.raises(ValueError, match="Invalid Choice answer"):
        compat.choice_decision(Animals, "label", {"cat": 0.4, "dog": 0.6}, {})


# ─── optimizers ────────────────────────────────────────────────────────────────────────────────

GOOD = "Answer with the letter you are given."


def letters_vlm(call) -> str:
    """Right only under GOOD; otherwise always "a"."""
    truth = re.search(r"letter (\w)", call.query_text).group(1)
    return json.dumps({"label": truth if GOOD in call.system else "a"})


def test_propose_instructions_feeds_the_study_and_mipro_logs_its_trials_and_best_score():
    proposals = []

    class Proposing(dspy.MIPROv2):
        def _propose_instructions(self, program, trainset, demo_candidates, *args, **kwargs):
            proposals.append((program, trainset))
            return {0: [program.predictors()[0].signature.instructions, GOOD]}

    data = [dspy.Example(text=f"letter {c}", label=c).with_inputs("text") for c in "abab"]
    lm = scripted_lm(ScriptedEngine(letters_vlm))
    with dspy.context(adapter=dspy.JSONAdapter()):
        optimizer = Proposing(metric=lambda ex, pred, trace=None: ex.label == pred.label, task_model=lm,
                              prompt_model=lm, auto=None, num_candidates=2, max_bootstrapped_demos=0,
                              max_labeled_demos=0, num_threads=1, verbose=False, seed=0)
        best = optimizer.compile(dspy.Predict(Letters), trainset=data, valset=data, num_trials=3, minibatch=False)
    ((program, trainset),) = proposals
    assert program.predictors()[0].signature.instructions == "Pick a label." and trainset == data
    assert best.predictors()[0].signature.instructions == GOOD
    assert compat.mipro_best_score(best) == 1.0
    trials = compat.mipro_trials(best)
    assert trials[0] == compat.MiproTrial(1, "full", 0.5, trials[0].program, 0, None)  # the default program
    assert {(t.scope, t.instruction_index, t.score) for t in trials[1:]} <= {("full", 0, 0.5), ("full", 1, 1.0)}
    assert ("full", 1, 1.0) in {(t.scope, t.instruction_index, t.score) for t in trials}
    assert [t.trial for t in trials] == sorted(t.trial for t in trials)


def test_input_keys_are_the_with_inputs_keys_and_none_when_never_set():
    example = dspy.Example(image="i", label="cat", reasoning="r").with_inputs("label", "image")
    assert compat.input_keys(example) == ["image", "label"]
    assert compat.input_keys(example.copy(reasoning="s")) == ["image", "label"]
    assert compat.input_keys(dspy.Example(augmented=True, image="i", label="cat")) is None


def test_instruction_proposer_shows_images_and_feedback_and_returns_one_instruction_per_component():
    writer = ScriptedWriter(lambda call, fields: {"new_instruction": "Look at the colour."})
    example = {"Inputs": {"image": dspy.Image(PNG)}, "Generated Outputs": {"label": "cat"},
               "Feedback": "Wrong: confused dog -> cat"}
    with dspy.context(lm=writer.lm()):
        proposed = compat.InstructionProposer()(candidate={"predict": "Classify."},
                                                reflective_dataset={"predict": [example]},
                                                components_to_update=["predict"])
    assert proposed == {"predict": "Look at the colour."}
    (call,) = writer.calls
    assert "Wrong: confused dog -> cat" in call_text(call) and "Classify." in call_text(call)
    assert sum(len(images) for _, _, images in call.turns) == 1  # the image went as image content


def test_record_in_trace_appends_like_predict_only_while_tracing_and_keeps_the_cap():
    predictor, pred = dspy.Predict(Letters), dspy.Prediction(label=None)
    compat.record_in_trace(predictor, {"text": "x"}, pred)  # no trace outside compiling: nothing to do
    with dspy.context(trace=[]):
        compat.record_in_trace(predictor, {"text": "x"}, pred)
        assert dspy.settings.trace == [(predictor, {"text": "x"}, pred)]
    with dspy.context(trace=[("old", {}, None)], max_trace_size=1):
        compat.record_in_trace(predictor, {"text": "y"}, pred)
        assert dspy.settings.trace == [(predictor, {"text": "y"}, pred)]


# ─── settings ──────────────────────────────────────────────────────────────────────────────────


def test_untracked_calls_add_no_history_and_no_usage():
    lm = scripted_lm(ScriptedEngine(lambda call: "two words"))
    with dspy.track_usage() as usage:
        with compat.untracked():
            lm("inner")
        assert (len(lm.history), usage.get_total_tokens()) == (0, {})
        lm("outer")
    assert len(lm.history) == 1
    assert usage.get_total_tokens()["vlmopt-test/scripted"]["completion_tokens"] == 2


def test_without_history_calls_add_no_history_and_keep_other_settings():
    lm = scripted_lm(ScriptedEngine(lambda call: "two words"))
    with compat.without_history(lm=lm):
        assert dspy.settings.lm is lm
        lm("inner")
    assert len(lm.history) == 0
    lm("outer")
    assert len(lm.history) == 1


# ─── the seam is the only door ─────────────────────────────────────────────────────────────────


def test_no_module_but_the_seam_reaches_dspy_internals():
    assert violations(package_sources(ROOT / "vlmopt")) == []


BREAKING = '''
# dspy._vendor.lm15 and dspy.clients.lm15_boundary are only named in this comment
import dspy
import dspy.clients.engines.base
import dspy_helpers
from dspy import JSONAdapter, _internal
from dspy.adapters.utils import format_field_value
from dspy.lm15 import TokenLogprob

NOTE = "from dspy._vendor import lm15"


class Mixin:
    def _call_preprocess(self, *args):
        return super()._call_preprocess(*args)


class Adapter(Mixin, JSONAdapter):
    def _call_postprocess(self, *args):
        self._mine = dspy.experimental.Choice
        return dspy.adapters.utils.serialize_for_json(args)


class Optimizer(dspy.MIPROv2):
    def _bootstrap_fewshot_examples(self, *args):
        return self._mine


class Engine:
    def _score(self, example, other):
        with dspy.settings.context(lm=None, usage_tracker=None):
            return example._input_keys, other._mine
'''


def test_the_boundary_check_finds_each_kind_of_reach_and_is_not_fooled_by_comments_or_strings():
    assert "_bootstrap_fewshot_examples" in vars(dspy.MIPROv2) and "_call_preprocess" in vars(dspy.Adapter)
    assert violations([("m.py", BREAKING)]) == [
        "m.py:4: import dspy.clients.engines.base",
        "m.py:6: from dspy import _internal",
        "m.py:7: from dspy.adapters.utils import format_field_value",
        "m.py:21: dspy.adapters.utils.serialize_for_json",
        "m.py:31: dspy.settings.context(usage_tracker=...)",
        "m.py:32: private attribute ._input_keys",
        "m.py:14: Mixin._call_preprocess overrides a private DSPy method",
        "m.py:25: Optimizer._bootstrap_fewshot_examples overrides a private DSPy method",
    ]
