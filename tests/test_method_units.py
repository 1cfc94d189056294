"""The pieces under the search methods: feedback texts, the budget mapping, the writing model's
image probe and the text-only reflection, the method checks, the method as an outer-study dimension."""

import dspy
import pytest

from study_task import GOOD, VAGUE, make_colour_folder, study_config
from vlmopt.config import ConfigError
from vlmopt.metrics import label_accuracy
from vlmopt.optimizers import budget
from vlmopt.optimizers.feedback import explain, feedback_metric
from vlmopt.optimizers.gepa_task import NOT_SHOWN, CandidateProposer, TextOnlyProposer
from vlmopt.optimizers.methods import cannot_run, methods_to_run
from vlmopt.optimizers.search_space import SearchSpace, apply_settings
from vlmopt.programs.confidence import PROBABILITIES_KEY
from vlmopt.serving.openai_lm import PROBE_IMAGE, sees_images
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm
from vlmopt.testing.scripted_writer import ScriptedWriter

LABELS = ["cat", "dog", "bird"]
GOLD = dspy.Example(label="cat")


def test_feedback_names_the_confused_pair_the_invalid_raw_text_and_low_confidence():
    wrong = explain(GOLD, dspy.Prediction(label="dog", valid=True), "single_label", LABELS)
    assert "answered 'dog'" in wrong and "(confused cat -> dog)" in wrong
    invalid = explain(GOLD, dspy.Prediction(label=None, valid=False, raw_output="pug"), "single_label", LABELS)
    assert invalid.startswith("Invalid output: the model wrote 'pug', which is not one of ['cat', 'dog', 'bird']")
    assert "The correct answer is 'cat'" in invalid
    unsure = dspy.Prediction(label="cat", valid=True, **{PROBABILITIES_KEY: {"cat": 0.4, "dog": 0.35, "bird": 0.25}})
    assert explain(GOLD, unsure, "single_label", LABELS).startswith("Correct ('cat'), but with low confidence")
    sure = dspy.Prediction(label="cat", valid=True, **{PROBABILITIES_KEY: {"cat": 0.9, "dog": 0.05, "bird": 0.05}})
    assert explain(GOLD, sure, "single_label", LABELS) == "Correct: the image is 'cat' (measured probability 0.90)."
    multi = explain(dspy.Example(label=["cat", "dog"]), dspy.Prediction(label=["cat", "bird"], valid=True),
                    "multi_label")
    assert "missed ['dog']" in multi and "added ['bird']" in multi
    fields = explain(dspy.Example(make="vw", year="2010"), dspy.Prediction(make="vw", year="2011", valid=True),
                     "multi_field", fields=["make", "year"])
    assert fields == "Wrong fields: year: answered '2011', correct '2010'."


def test_the_feedback_metric_keeps_the_plain_metrics_score_for_every_caller():
    metric = feedback_metric(label_accuracy, "single_label", LABELS)
    right, wrong = dspy.Prediction(label="cat", valid=True), dspy.Prediction(label="dog", valid=True)
    assert metric(GOLD, right).score == 1.0 and metric(GOLD, wrong).score == 0.0
    assert metric(GOLD, wrong, None, "predict", []).feedback == explain(GOLD, wrong, "single_label", LABELS)  # GEPA


def test_the_budget_maps_onto_each_methods_own_knob():
    assert budget.gepa_metric_calls(400).value == 400
    assert budget.mipro_trials(400, n_val=40, per_trial=25).value == 14  # (400 - 40) // 25
    simba = budget.simba_steps(400, default=8, bsize=6, num_candidates=3, n_train=6, n_val=12)
    assert simba.value == (400 - 4 * 18) // (6 * 3 + 4 * 6) and simba.expected_calls <= 400
    assert budget.simba_steps(None, default=8, bsize=6, num_candidates=3, n_train=6, n_val=12).value == 8
    search = budget.random_search_candidates(400, default=16, n_train=6, n_val=12)
    assert search.value == 400 // 18 - 3 and search.expected_calls <= 400
    assert budget.random_search_candidates(10, default=16, n_train=6, n_val=12).value == 0  # the fixed three only
    assert "budget 400 calls -> max_metric_calls=400" in budget.gepa_metric_calls(400).describe(400)


def test_the_probe_says_whether_the_writing_model_takes_images():
    def text_only(call):
        if any(images for _, _, images in call.turns):
            raise ValueError("this model does not accept image input")
        return "red"

    assert sees_images(scripted_lm(ScriptedEngine(lambda call: "red")))
    assert not sees_images(scripted_lm(ScriptedEngine(text_only)))
    assert PROBE_IMAGE.startswith("data:image/png;base64,")


def test_a_text_only_reflection_model_gets_the_feedback_but_no_image():
    writer = ScriptedWriter(lambda call, fields: {"new_instruction": GOOD})
    example = {"Inputs": {"image": dspy.Image(PROBE_IMAGE)}, "Generated Outputs": {"label": "dog"},
               "Feedback": "Wrong: (confused cat -> dog)"}
    with dspy.context(lm=writer.lm()):
        proposed = TextOnlyProposer()(candidate={"predict": VAGUE}, reflective_dataset={"predict": [example]},
                                      components_to_update=["predict"])
    assert proposed == {"predict": GOOD}
    (call,) = writer.calls
    assert not any(images for _, _, images in call.turns)
    assert NOT_SHOWN in writer.texts()[0] and "(confused cat -> dog)" in writer.texts()[0]


def test_the_candidate_proposer_proposes_each_instruction_once_then_stops_gepa():
    proposer = CandidateProposer([VAGUE, GOOD])
    assert proposer(candidate={"p": "x"}, reflective_dataset={}, components_to_update=["p"]) == {"p": VAGUE}
    assert not proposer.exhausted(None)
    assert proposer(candidate={"p": "x"}, reflective_dataset={}, components_to_update=["p"]) == {"p": GOOD}
    assert proposer.exhausted(None)
    with pytest.raises(RuntimeError, match="already proposed"):
        proposer(candidate={"p": "x"}, reflective_dataset={}, components_to_update=["p"])


def test_which_methods_can_run_without_a_prompt_model(tmp_path):
    cfg = study_config(tmp_path, tmp_path)  # prompt_model: none, with two candidate instructions
    assert cannot_run("mipro", cfg.optimizer) is None and cannot_run("random_search", cfg.optimizer) is None
    assert cannot_run("gepa", cfg.optimizer) is None  # it proposes optimizer.instructions in turn
    assert "needs a prompt model for its rules" in cannot_run("simba", cfg.optimizer)
    bare = cfg.optimizer.model_copy(update={"instructions": []})
    assert "or give optimizer.instructions" in cannot_run("gepa", bare)
    compare = cfg.model_copy(update={"optimizer": bare.model_copy(update={"compare": ["gepa", "random_search"]})})
    runnable, skipped = methods_to_run(compare)
    assert runnable == ["random_search"] and len(skipped) == 1 and "'gepa'" in skipped[0]
    nothing = compare.model_copy(update={"optimizer": bare.model_copy(update={"compare": ["simba"]})})
    with pytest.raises(ConfigError, match="'simba'"):
        methods_to_run(nothing)


def test_the_outer_study_can_choose_the_method(tmp_path):
    cfg = study_config(make_colour_folder(tmp_path / "c", per_class=2), tmp_path,
                       search_methods=["random_search", "gepa"])
    space = SearchSpace.from_config(cfg)
    assert space.method == ("mipro", "random_search", "gepa")
    settings = {name: choices[-1] for name, choices in space.to_json().items()}
    assert apply_settings(cfg, settings).optimizer.method == "gepa"
    assert SearchSpace.from_config(study_config(tmp_path, tmp_path)).method == ("mipro",)  # pinned by default


def test_the_cli_refuses_a_method_without_its_writer_and_an_unknown_compare_name_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from vlmopt.cli import app

    config = tmp_path / "colours.yaml"
    config.write_text(study_config(make_colour_folder(tmp_path / "c", per_class=2), tmp_path).model_dump_yaml())
    refused = CliRunner().invoke(app, ["optimize", str(config), "--method", "simba"])
    assert refused.exit_code == 2 and "needs a prompt model for its rules" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "runs").exists()  # before any work
    unknown = CliRunner().invoke(app, ["optimize", str(config), "--compare", "mipro,bogus"])
    assert unknown.exit_code == 2 and "optimizer.compare" in unknown.output and "Traceback" not in unknown.output
