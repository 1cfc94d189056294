"""The committed micro-VLM answers what its prompt asks, through the real engine and program.

The accuracy tests evaluate afresh (a different seeded image set from the card's) and compare
with the card's figures (``metrics.json``, written with ``MODEL_CARD.md`` from the same run).
"""

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, Idefics3ForConditionalGeneration

from vlmopt.demo import shapes_task
from vlmopt.demo.micro_vlm import Recipe, build_untrained, micro_vlm_dir, train_micro_vlm
from vlmopt.demo.micro_vlm_eval import Case, evaluate_micro_vlm, headline_cases

N_FRESH = 60
FRESH_SEED = 1  # the card used seed 0: these scenes are new
TOLERANCE = 0.15
"""|fresh - card| allowed per case: 60 images give a binomial s.e. of up to 0.065 (at p = 0.5)."""
PRECISE_MIN = 0.9
GAP_MIN = 0.3


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((micro_vlm_dir() / "metrics.json").read_text())


@pytest.fixture(scope="module")
def fresh() -> dict[str, dict]:
    cases = headline_cases() + [Case("demos/vague/row", "demos_vague", "row", shapes_task.VAGUE[0], n_demos=2)]
    return {row["name"]: row for row in evaluate_micro_vlm(micro_vlm_dir(), n=N_FRESH, seed=FRESH_SEED, cases=cases)}


def test_committed_checkpoint_loads_like_any_vlm(card):
    directory = micro_vlm_dir()
    processor = AutoProcessor.from_pretrained(directory)
    model = AutoModelForImageTextToText.from_pretrained(directory)
    assert isinstance(model, Idefics3ForConditionalGeneration)
    assert sum(p.numel() for p in model.parameters()) == card["training"]["parameters"] < 1_000_000
    assert load_file(directory / "model.safetensors")  # weights are safetensors, not pickle
    assert (directory / "MODEL_CARD.md").read_text().count("| precise/") >= 2
    for label in shapes_task.LABELS:  # every label is one token, so label scoring compares like with like
        assert len(processor.tokenizer.encode(label, add_special_tokens=False)) == 1


def test_precise_instructions_score_high_and_vague_ones_do_not(fresh):
    for attribute in shapes_task.ATTRIBUTES:
        precise = fresh[f"precise/{attribute}"]["accuracy"]
        assert precise >= PRECISE_MIN, (attribute, precise)
        assert fresh[f"vague/{attribute}"]["accuracy"] <= precise - GAP_MIN, attribute
        assert fresh[f"held_out/{attribute}"]["invalid_rate"] == 0.0


def test_fresh_evaluation_matches_the_card(fresh, card):
    by_name = {row["name"]: row for row in card["eval"]["results"]}
    assert card["eval"]["n"] >= 300
    for case in headline_cases():
        card_name = {"precise": f"precise/{case.attribute}/0", "held_out": f"held_out/{case.attribute}/0",
                     "vague": f"vague/{case.attribute}/0"}[case.kind]
        measured, stated = fresh[case.name]["accuracy"], by_name[card_name]["accuracy"]
        assert abs(measured - stated) <= TOLERANCE, (case.name, measured, stated)
    demos = fresh["demos/vague/row"]["accuracy"]
    assert abs(demos - by_name["demos/vague/row"]["accuracy"]) <= TOLERANCE


def _dark_cells(image: Image.Image) -> set[tuple[int, int]]:
    """(row, column) grid cells, from 1, holding object pixels (the background is light)."""
    dark = np.asarray(image).min(axis=2) < 200
    cell = shapes_task.IMAGE_SIDE / shapes_task.GRID
    return {(int(y // cell) + 1, int(x // cell) + 1) for y, x in zip(*np.nonzero(dark), strict=True)}


def test_scenes_show_what_their_answers_say():
    rng = random.Random(0)
    for _ in range(50):
        image, answers = shapes_task.draw_scene(rng)
        assert _dark_cells(image) == {(int(answers["row"]), int(answers["column"]))}
        assert answers["row"] != answers["column"]


def test_dataset_folder_is_labelled_by_the_attribute(tmp_path):
    root = shapes_task.write_micro_task_dataset(tmp_path / "column", attribute="column", n_per_class=3, seed=5)
    for label in shapes_task.LABELS:
        files = sorted((root / label).glob("*.png"))
        assert len(files) == 3
        for file in files:
            assert {column for _, column in _dark_cells(Image.open(file).convert("RGB"))} == {int(label)}
    again = shapes_task.write_micro_task_dataset(tmp_path / "again", attribute="column", n_per_class=3, seed=5)
    assert (again / "2" / "2_001.png").read_bytes() == (root / "2" / "2_001.png").read_bytes()
    with pytest.raises(ValueError, match="row, column"):
        shapes_task.write_micro_task_dataset(tmp_path / "bad", attribute="colour")


def test_training_runs_and_is_reproducible(tmp_path):
    recipe = Recipe(steps=3, batch_size=4, warmup=1, warm_start_steps=1, p_demos=1.0)
    first = train_micro_vlm(tmp_path / "a", seed=3, recipe=recipe, log_every=1)
    train_micro_vlm(tmp_path / "b", seed=3, recipe=recipe, log_every=1)
    assert first["steps"] == 3 and np.isfinite(first["final_loss"])
    weights_a = load_file(tmp_path / "a" / "model.safetensors")
    weights_b = load_file(tmp_path / "b" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    AutoModelForImageTextToText.from_pretrained(tmp_path / "a")  # loads with the Auto classes
    initial = load_file(build_untrained(tmp_path / "init", seed=3) / "model.safetensors")
    assert any(not torch.equal(initial[name], weights_a[name]) for name in weights_a)  # training moved them
