"""CLIP / SigLIP baselines on tiny random checkpoints built offline, loaded through ``from_pretrained``.

The zero-shot numbers are checked against a computation written here from the model's own
methods (and its own forward pass), the probe against a scikit-learn fit on features computed
here, so the library's code is never its own oracle.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from typer.testing import CliRunner

from vlmopt.alternatives.encoder import ContrastiveEncoder
from vlmopt.alternatives.linear_probe import C_GRID, ProbeDependencyError, fit_probe
from vlmopt.alternatives.run import LINEAR_PROBE, ZERO_SHOT, BaselineSettings, run_baselines
from vlmopt.alternatives.zero_shot import class_embeddings, label_probabilities, softmax
from vlmopt.cli import app
from vlmopt.config import TaskConfig
from vlmopt.datasets import load_splits
from vlmopt.datasets.images import dspy_image_to_pil
from vlmopt.metrics import compute_metrics
from vlmopt.metrics.records import PredictionRecord
from vlmopt.testing.tiny_clip import build_tiny_clip

LABELS = ["circle", "square", "triangle"]
TEMPLATES = ("a photo of a {}.", "a drawing of a {}.", "{}")
FAMILIES = ("clip", "siglip")


@pytest.fixture(scope="session")
def tiny_clip_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny-clip")
    return {family: build_tiny_clip(family, root / family, seed=3) for family in FAMILIES}


def shapes_config(data_folder, root, **run) -> TaskConfig:
    return TaskConfig(
        name="shapes",
        seed=1,
        dataset={"source": str(data_folder), "kind": "imagefolder", "max_image_side": 64},
        task={"labels": LABELS},
        run={"output_dir": str(root / "runs"), "cache_dir": str(root / "cache"), **run},
    )


@pytest.fixture(scope="session")
def baseline_runs(tiny_clip_dirs, synthetic_data, tmp_path_factory):
    """Zero-shot + probe per family on the synthetic shapes (6 train, 12 val, 12 test)."""
    root = tmp_path_factory.mktemp("baseline-runs")
    cfg = shapes_config(synthetic_data.folder, root)
    return {
        family: run_baselines(cfg, BaselineSettings(model=str(path), probe=True, templates=TEMPLATES))
        for family, path in tiny_clip_dirs.items()
    }, cfg


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def hand_features(model_dir, images) -> np.ndarray:
    """Image embeddings straight from transformers (not the library's encoder)."""
    from transformers import AutoModel, AutoProcessor

    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    with torch.no_grad():
        return _unit(model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output).numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_shot_probabilities_sum_to_one_and_equal_a_hand_computation(family, tiny_clip_dirs, synthetic_data):
    from transformers import AutoModel, AutoProcessor

    model_dir = tiny_clip_dirs[family]
    images = [
        dspy_image_to_pil(ex.image)
        for ex in load_splits(shapes_config(synthetic_data.folder, model_dir.parent)).test[:5]
    ]
    encoder = ContrastiveEncoder.load(str(model_dir), device="cpu")
    features, seconds = encoder.encode_images(images, batch_size=2)
    probs = label_probabilities(
        features, class_embeddings(encoder, LABELS, TEMPLATES), scale=encoder.logit_scale, bias=encoder.logit_bias
    )
    assert probs.shape == (5, 3) and np.allclose(probs.sum(axis=1), 1.0) and len(seconds) == 5

    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    padding = "max_length" if family == "siglip" else True  # SigLIP was trained on max_length padding
    with torch.no_grad():
        image = _unit(model.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output)
        classes = []
        for label in LABELS:
            texts = processor(text=[t.replace("{}", label) for t in TEMPLATES], padding=padding, return_tensors="pt")
            classes.append(_unit(_unit(model.get_text_features(**texts).pooler_output).mean(dim=0)))
        bias = model.logit_bias if family == "siglip" else 0.0
        logits = model.logit_scale.exp() * image @ torch.stack(classes).T + bias
        assert np.allclose(probs, torch.softmax(logits, dim=1).numpy(), atol=1e-5)
        # one template: the library's logits are the model's own forward pass's
        one = processor(text=LABELS, images=images, padding=padding, return_tensors="pt")
        own = model(**one).logits_per_image.numpy()
    single = class_embeddings(encoder, LABELS, ["{}"])
    mine = encoder.logit_scale * features @ single.T + encoder.logit_bias
    assert np.allclose(mine, own, atol=1e-4)


def test_softmax_is_the_posterior_of_independent_sigmoid_matches_given_one_true_class():
    """SigLIP's rule (zero_shot.py): P(c | exactly one of k independent sigmoid matches) = softmax(logits)."""
    logits = np.random.default_rng(0).normal(size=(4, 5)) * 3 - 2
    s = 1 / (1 + np.exp(-logits))
    joint = np.stack([s[:, c] * np.prod(np.delete(1 - s, c, axis=1), axis=1) for c in range(5)], axis=1)
    assert np.allclose(joint / joint.sum(axis=1, keepdims=True), softmax(logits))


def test_linear_probe_matches_a_hand_checked_sklearn_fit(baseline_runs, tiny_clip_dirs):
    outcomes, cfg = baseline_runs
    splits = load_splits(cfg)  # the project's seeded split, as the run used it (never a new one)
    model_dir = tiny_clip_dirs["clip"]
    x = {
        name: hand_features(model_dir, [dspy_image_to_pil(ex.image) for ex in getattr(splits, name)])
        for name in ("train", "val", "test")
    }
    y = {name: [ex.label for ex in getattr(splits, name)] for name in ("train", "val", "test")}
    val_acc = {
        c: np.mean(
            LogisticRegression(C=c, max_iter=2000, random_state=1).fit(x["train"], y["train"]).predict(x["val"])
            == np.asarray(y["val"])
        )
        for c in C_GRID
    }
    best = max(val_acc.values())
    chosen = min(c for c in C_GRID if val_acc[c] == best)  # ties: the more regularised C

    run = outcomes["clip"].methods[LINEAR_PROBE]
    probe = run.metrics["probe"]
    assert probe["C"] == chosen and probe["trained_on"] == ["train"] and probe["n_train"] == 6
    assert probe["val_accuracy_by_C"] == {f"{c:g}": pytest.approx(a) for c, a in val_acc.items()}
    oracle = LogisticRegression(C=chosen, max_iter=2000, random_state=1).fit(x["train"], y["train"])
    expected = oracle.predict_proba(x["test"])  # classes_ sorted == LABELS
    rows = [PredictionRecord.from_json(line) for line in (run.run.path / "predictions.jsonl").read_text().splitlines()]
    assert [r.id for r in rows] == [str(ex.id) for ex in splits.test]
    got = np.array([[r.probabilities[label] for label in LABELS] for r in rows])
    assert np.allclose(got, expected, atol=1e-5)
    assert [r.predicted for r in rows] == list(oracle.predict(x["test"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_method_writes_a_complete_run_directory(family, baseline_runs):
    outcomes, cfg = baseline_runs
    splits = load_splits(cfg)
    outcome = outcomes[family]
    assert set(outcome.methods) == {ZERO_SHOT, LINEAR_PROBE}
    assert json.loads((outcome.run.path / "baseline.json").read_text())["methods"] == {
        ZERO_SHOT: "zero_shot",
        LINEAR_PROBE: "linear_probe",
    }
    for method in outcome.methods.values():
        path = method.run.path
        for name in (
            "config.yaml",
            "predictions.jsonl",
            "metrics.json",
            "confusion.png",
            "report.html",
            "baseline.json",
        ):
            assert (path / name).is_file(), name
        metrics = json.loads((path / "metrics.json").read_text())
        rows = [PredictionRecord.from_json(line) for line in (path / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == metrics["n"] == 12 and all(r.valid for r in rows)
        for r in rows:
            assert sum(r.probabilities.values()) == pytest.approx(1.0)
            assert r.confidence == pytest.approx(max(r.probabilities.values()))
            assert r.thumbnail.startswith("data:image/jpeg;base64,")
        recomputed = compute_metrics(rows, output_kind="single_label", labels=LABELS, seed=1)
        for key in ("accuracy", "accuracy_ci", "macro_f1", "per_class", "confusion", "ece", "calibration"):
            assert metrics[key] == json.loads(json.dumps(recomputed[key])), key
        assert metrics["calibration"]["n"] == 12 and metrics["calibration"]["brier"] is not None
        assert metrics["split"] == "test" and metrics["split_fingerprint"] == splits.fingerprint
        assert metrics["split_sizes"] == {"train": 6, "val": 12, "test": 12}
        assert metrics["family"] == family and metrics["parameters"] > metrics["parameters_detail"]["head"] > 0
        assert metrics["latency_ms_per_image"] > 0 and metrics["wall_s"] > metrics["load_s"] > 0
        assert metrics["model_size_bytes"] > metrics["parameters"]  # float32: 4 bytes each
    zero_shot = outcome.methods[ZERO_SHOT]
    assert zero_shot.metrics["model_calls"] == 3 * len(TEMPLATES) + 12 + 12
    dim = {"clip": 16, "siglip": 32}[family]  # the tiny checkpoints' embedding size
    assert zero_shot.metrics["parameters_detail"]["head"] == 3 * dim  # one class embedding per label
    assert outcome.methods[LINEAR_PROBE].metrics["parameters_detail"]["head"] == 3 * dim + 3  # weights, intercepts
    val = json.loads((zero_shot.run.path / "val_metrics.json").read_text())
    assert val["split"] == "val" and val["n"] == 12 and zero_shot.metrics["val_accuracy"] == val["accuracy"]


def test_train_and_val_trains_on_both_and_lets_val_choose_nothing(tiny_clip_dirs, synthetic_data, tmp_path):
    cfg = shapes_config(synthetic_data.folder, tmp_path)
    settings = BaselineSettings(model=str(tiny_clip_dirs["clip"]), zero_shot=False, probe=True, train_and_val=True)
    outcome = run_baselines(cfg, settings)
    probe = outcome.methods[LINEAR_PROBE].metrics["probe"]
    assert set(outcome.methods) == {LINEAR_PROBE}
    assert probe["trained_on"] == ["train", "val"] and probe["n_train"] == 18
    assert probe["C"] == 1.0 and probe["val_accuracy_by_C"] is None


def test_a_rerun_reads_each_splits_embeddings_from_the_cache(tiny_clip_dirs, synthetic_data, tmp_path):
    cfg = shapes_config(synthetic_data.folder, tmp_path)
    settings = BaselineSettings(model=str(tiny_clip_dirs["siglip"]), templates=TEMPLATES)
    first = run_baselines(cfg, settings)
    cached = sorted((tmp_path / "cache" / "embeddings").glob("*.npz"))
    assert [p.name.split("-")[0] for p in cached] == ["test", "val"]
    stamps = [p.stat().st_mtime_ns for p in cached]
    second = run_baselines(cfg, settings)
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # read, not rewritten
    read = [
        [
            json.loads(line)["probabilities"]
            for line in (o.methods[ZERO_SHOT].run.path / "predictions.jsonl").read_text().splitlines()
        ]
        for o in (first, second)
    ]
    assert read[0] == read[1] and first.run.path != second.run.path


def test_the_probe_without_scikit_learn_is_one_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.linear_model", None)  # what an install without the extra sees
    with pytest.raises(ProbeDependencyError, match=r"pip install 'vlmopt\[baselines\]'"):
        fit_probe(np.eye(2), ["a", "b"], ["a", "b"], C=1.0)


runner = CliRunner()


def write_config(tmp_path, data_folder):
    path = tmp_path / "shapes.yaml"
    cfg = shapes_config(data_folder, tmp_path)
    path.write_text(cfg.model_dump_yaml())
    return path


def test_cli_baseline_writes_the_runs_and_prints_the_table(tiny_clip_dirs, synthetic_data, tmp_path):
    config = write_config(tmp_path, synthetic_data.folder)
    result = runner.invoke(
        app,
        [
            "baseline",
            str(config),
            "--clip",
            str(tiny_clip_dirs["clip"]),
            "--probe",
            "--template",
            "a photo of a {}.",
            "--batch-size",
            "5",
        ],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("shapes-baseline-") and {p.name for p in run.iterdir()} >= {"zero_shot", "linear_probe"}
    said = " ".join(result.output.split())
    assert "CLIP zero-shot" in said and "CLIP linear probe" in said and str(run.name) in said
    details = json.loads((run / "zero_shot" / "baseline.json").read_text())
    assert details["templates"] == ["a photo of a {}."]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--clip", "/no/such/clip"], "does not exist; give a local model directory or a hub id"),
        (["--template", "a photo"], "needs exactly one {} where the class name goes"),
        (["--train-and-val"], "--train-and-val trains the linear probe: add --probe"),
        (["--no-zero-shot"], "nothing to run: keep the zero-shot baseline or add --probe"),
    ],
)
def test_cli_baseline_mistakes_are_one_line_and_exit_2(args, expected, tiny_clip_dirs, synthetic_data, tmp_path):
    config = write_config(tmp_path, synthetic_data.folder)
    clip = [] if "--clip" in args else ["--clip", str(tiny_clip_dirs["clip"])]
    result = runner.invoke(app, ["baseline", str(config), *clip, *args], catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert expected in " ".join(result.output.split())


def test_report_puts_an_evaluate_run_and_the_baselines_of_one_config_in_one_table(
    tiny_clip_dirs, tiny_idefics3_dir, synthetic_data, tmp_path
):
    """The real path: `evaluate` on a tiny VLM and `baseline` on the same config score the same test images."""
    cfg = shapes_config(synthetic_data.folder, tmp_path).model_dump()
    cfg["model"] = {"id": str(tiny_idefics3_dir), "max_new_tokens": 16}
    config = tmp_path / "shapes.yaml"
    config.write_text(TaskConfig.model_validate(cfg).model_dump_yaml())
    assert runner.invoke(app, ["evaluate", str(config)], catch_exceptions=False).exit_code == 0
    (evaluated,) = (tmp_path / "runs").iterdir()
    clip = ["baseline", str(config), "--clip", str(tiny_clip_dirs["siglip"]), "--probe"]
    assert runner.invoke(app, clip, catch_exceptions=False).exit_code == 0
    (baselines,) = (p for p in (tmp_path / "runs").iterdir() if p != evaluated)
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert metrics["method"] == "prompt" and metrics["model_calls"] == 12 and metrics["wall_s"] > 0
    probe = json.loads((baselines / "linear_probe" / "metrics.json").read_text())
    assert metrics["split_fingerprint"] == probe["split_fingerprint"] == load_splits(TaskConfig(**cfg)).fingerprint

    out = tmp_path / "cmp"
    result = runner.invoke(
        app, ["report", str(evaluated), str(baselines), "-o", str(out)], env={"COLUMNS": "200"}, catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = (out / "comparison.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["prompt", "SigLIP zero-shot", "SigLIP linear probe"]
