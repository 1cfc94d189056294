"""Image demos are counted against the model's context before the search, and capped to fit."""

import json

import pytest

from vlmopt.config import parse_config
from vlmopt.datasets import load_splits
from vlmopt.optimizers.context_budget import max_demos_that_fit, prompt_tokens
from vlmopt.optimizers.search_space import SearchSpace
from vlmopt.optimizers.study import run_search
from vlmopt.programs import create_program
from vlmopt.reports.run_dir import RunDir
from vlmopt.serving.transformers_engine import create_lm
from vlmopt.testing.tiny_vlm import build_tiny_vlm


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    model_dir = build_tiny_vlm("idefics3", tmp_path_factory.mktemp("short-ctx"))
    config = json.loads((model_dir / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 150
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


def test_demos_are_capped_to_the_context(short_context_model, synthetic_data):
    cfg = parse_config({"dataset": {"source": str(synthetic_data.folder), "max_image_side": 64},
                        "task": {"labels": list(synthetic_data.classes)}})
    splits = load_splits(cfg)
    lm = create_lm(str(short_context_model), max_new_tokens=16)
    program = create_program(cfg.task, splits.labels)
    sizes = [prompt_tokens(program, splits.train[1 : k + 1], splits.train[0], lm) for k in range(3)]
    assert sizes[0] < sizes[1] < sizes[2] and sizes[2] - sizes[1] == sizes[1] - sizes[0]  # one image per demo
    fits, note = max_demos_that_fit(program, splits.train, lm, wanted=4, answer_tokens=16)
    assert sizes[fits] <= 150 - 16 < sizes[fits + 1]
    assert note.startswith(f"few-shot demos capped at {fits} (of 4)")
    assert max_demos_that_fit(program, splits.train, lm, wanted=fits, answer_tokens=16) == (fits, None)


def test_an_outer_search_trial_caps_demos_as_the_plain_search_does(short_context_model, synthetic_data, tmp_path):
    """Each trial of the outer study takes the plain search's MIPROv2 path, context cap included."""
    cfg = parse_config({
        "name": "capped",
        "model": {"id": str(short_context_model), "max_new_tokens": 16},
        "dataset": {"source": str(synthetic_data.folder), "max_image_side": 64},
        "task": {"labels": list(synthetic_data.classes)},
        "optimizer": {"max_labeled_demos": 4, "max_bootstrapped_demos": 0, "prompt_model": "none",
                      "num_candidates": 2, "num_trials": 2, "minibatch": False, "search_trials": 1},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 2},
    })
    one_setting = SearchSpace(adapter=("compact",), reasoning=(False,), structured_generation=(True,),
                              max_labeled_demos=(4,), max_bootstrapped_demos=(0,), max_image_side=(64,),
                              num_candidates=(2,), num_trials=(2,))
    lm = create_lm(str(short_context_model), max_new_tokens=16)
    result = run_search(cfg, run=RunDir.create(tmp_path / "runs", "capped"), space=one_setting,
                        lm_factory=lambda _cfg: lm)
    notes = result.best.user_attrs["notes"]
    assert any(note.startswith("few-shot demos capped at") and "(of 4)" in note for note in notes), notes
    assert result.best_splits() is not None  # the winner's rebuild reuses the trial's splits
