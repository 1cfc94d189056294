"""``task.other_label``: a closed-set "none of these" answer, scored like any label and reported apart.

The colour task gains grey images whose gold is the other label (``none``). The scripted model
(the test double at the model edge, ``vlmopt.testing.scripted_engine``) answers ``none`` for grey,
surely, and is unsure on every fourth coloured shade (``test_abstain.measured``), so one run holds
both decisions the report must tell apart: answered "none", and abstained.
"""

import html as html_lib
import json
import re

import pytest
from PIL import Image

from study_task import make_colour_folder, study_config
from test_abstain import LABELS, measured
from vlmopt.artifacts import load_artifact
from vlmopt.config import ConfigError, parse_config
from vlmopt.datasets import load_splits
from vlmopt.pipeline import optimize_task
from vlmopt.programs import create_program
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm

OTHER = "none"


def grey(image) -> bool:
    r, g, b = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
    return max(r, g, b) - min(r, g, b) < 20


def answer(call):
    if grey(call.query_image):
        return {k: 0.85 if k == OTHER else 0.05 for k in [*LABELS, OTHER]}
    return {**measured(call), OTHER: 0.0}


@pytest.fixture(scope="module")
def with_other(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("other")
    folder = make_colour_folder(tmp / "data", per_class=16)
    (folder / OTHER).mkdir()
    for i in range(10):
        Image.new("RGB", (32, 32), (100 + 8 * i,) * 3).save(folder / OTHER / f"grey_{i:02d}.png")
    raw = study_config(folder, tmp, num_candidates=1, num_trials=1, instructions=["Name the colour."],
                       abstain={"target_accuracy": 0.99}).model_dump()
    raw["task"]["other_label"] = OTHER
    cfg = parse_config(raw)
    outcome = optimize_task(cfg, lm=scripted_lm(ScriptedEngine(answer), name="other", cache=True))
    return cfg, outcome


def test_the_other_label_joins_the_closed_set_and_the_model_is_told_what_it_means(with_other):
    cfg, _ = with_other
    assert cfg.task.labels == [*LABELS, OTHER] and load_splits(cfg).labels == [*LABELS, OTHER]
    signature = create_program(cfg.task, cfg.task.labels).signature
    assert "none of the other labels" in signature.output_fields["label"].json_schema_extra["desc"]
    default = parse_config({"dataset": {"source": "x"}, "task": {"labels": ["cat", "dog"], "other_label": "adopted"}})
    assert default.task.labels == ["cat", "dog", "adopted"]
    assert "'adopted' when the image shows none" in create_program(default.task).signature.instructions


def test_other_is_scored_like_any_label_and_reported_apart_from_abstentions(with_other):
    _, outcome = with_other
    metrics = outcome.optimized["test"].metrics
    records = outcome.optimized["test"].records
    gold_other = [r for r in records if r.gold == OTHER]
    assert gold_other and all(r.predicted == OTHER and not r.abstained for r in gold_other)
    assert metrics["per_class"][OTHER] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": len(gold_other)}
    other = metrics["other"]
    assert other["label"] == OTHER and other["n_gold"] == other["n_predicted"] == other["n_answered"] == len(gold_other)
    n_abstained = metrics["selective"]["n_abstained"]
    assert n_abstained > 0 and not any(r.abstained and r.predicted == OTHER for r in records)

    text = html_lib.unescape(re.sub(r"<[^>]+>", "", (outcome.run.path / "report.html").read_text()))
    counts = " ".join(text[text.index("scored"):].split())
    assert f"{n_abstained} abstained" in counts and f"{len(gold_other)} answered “{OTHER}” (none of these)" in counts


def test_the_artifact_keeps_the_other_label(with_other):
    _, outcome = with_other
    data = json.loads(outcome.artifact.read_text())
    assert data["format_version"] == 3 and data["decision"]["other_label"] == OTHER
    frozen = load_artifact(outcome.artifact, expected_labels=[*LABELS, OTHER])
    assert frozen.task.other_label == OTHER and frozen.labels[-1] == OTHER


@pytest.mark.parametrize(("task", "says"), [
    ({"output": "multi_label", "labels": ["cat"], "other_label": "none"}, "is for output 'single_label'"),
    ({"labels": ["cat"], "other_label": " "}, "task.other_label is empty"),
])
def test_a_bad_other_label_is_named(task, says):
    with pytest.raises(ConfigError, match=says):
        parse_config({"dataset": {"source": "x"}, "task": task}, "task.yaml")


def test_the_seed_task_config_has_the_adopted_label_and_abstains():
    from pathlib import Path

    from vlmopt.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "cats_vs_dogs_other.yaml")
    assert cfg.task.labels == ["cat", "dog", "adopted"] and cfg.task.other_label == "adopted"
    assert cfg.optimizer.abstain.target_accuracy == 0.99
