"""The command line as a user runs it: real commands, real tiny VLM, real files; clear errors, no tracebacks."""

import json
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlmopt.cli import app
from vlmopt.export import fill_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
runner = CliRunner()

COMMANDS = ("config", "evaluate", "optimize", "predict", "export", "report", "serve", "baseline", "demo")


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_command_with_a_line():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        line = next((ln for ln in result.output.splitlines() if f" {command} " in ln), "")
        assert len(line.split()) > 2, f"{command} has no one-line description in --help"


def test_config_validate_and_show():
    result = invoke("config", "validate", str(CONFIGS / "cats_vs_dogs_v0.yaml"))
    assert result.exit_code == 0 and "ok" in result.output
    shown = yaml.safe_load(invoke("config", "show", str(CONFIGS / "cats_vs_dogs_v0.yaml")).output)
    assert shown["dataset"]["label_mapping"] == {0: "cat", 1: "dog"} and shown["run"]["num_threads"] == 4


def test_bad_config_is_one_clear_message_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {source: x, n_sample: 3}\n")
    result = invoke("config", "validate", str(bad))
    assert result.exit_code == 2
    assert "did you mean 'n_samples'" in result.output and "Traceback" not in result.output


def test_hub_unreachable_fails_fast_and_names_the_offline_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = yaml.safe_load((CONFIGS / "cats_vs_dogs.yaml").read_text())
    cfg["run"] = {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache")}
    path = tmp_path / "cats.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    result = invoke("evaluate", str(path))
    assert time.monotonic() - started < 60
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "hub" in result.output.lower() and "microsoft/cats_vs_dogs" in result.output
    assert "vlmopt demo --offline" in result.output


def write_task(tmp_path: Path, model_dir: Path, data_dir: Path, **extra) -> Path:
    cfg = {
        "name": "shapes",
        "seed": 1,
        "model": {"id": str(model_dir), "max_new_tokens": 16},
        "dataset": {"source": str(data_dir), "kind": "imagefolder", "max_image_side": 64},
        "task": {"labels": ["circle", "square", "triangle"], "system_prompt": "Look at the shape.",
                 "user_prompt": "What shape is shown?"},
        "optimizer": {"auto": None, "num_candidates": 2, "num_trials": 2, "max_bootstrapped_demos": 1,
                      "max_labeled_demos": 1, "minibatch": False, "prompt_model": "none",
                      "instructions": ["Name the shape."]},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 2},
        **extra,
    }
    path = tmp_path / "shapes.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_missing_model_directory_is_one_line_not_a_traceback(tmp_path, synthetic_data):
    missing = tmp_path / "no-such-model"
    result = invoke("evaluate", str(write_task(tmp_path, missing, synthetic_data.folder)))
    assert result.exit_code == 2 and "Traceback" not in result.output
    said = " ".join(result.output.split())  # rich wraps long lines at the runner's width
    assert "no-such-model" in said and "does not exist; give a local model directory or a hub id" in said


def test_evaluate_writes_a_run_directory(tmp_path, tiny_idefics3_dir, synthetic_data):
    path = write_task(tmp_path, tiny_idefics3_dir, synthetic_data.folder)
    result = invoke("evaluate", str(path), "--split", "test")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(rows) == metrics["n"] == metrics["split_sizes"]["test"] == 12
    assert all(row["predicted"] in {"circle", "square", "triangle"} for row in rows)
    assert all(row["thumbnail"].startswith("data:image/jpeg;base64,") for row in rows)
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-6
    for name in ("config.yaml", "confusion.png", "report.html"):
        assert (run / name).is_file()


@pytest.mark.slow
def test_optimize_then_export_predict_report(tmp_path, tiny_idefics3_dir, synthetic_data, bad_images):
    path = write_task(tmp_path, tiny_idefics3_dir, synthetic_data.folder)
    result = invoke("optimize", str(path), "--calibrate")
    assert result.exit_code == 0, result.output
    assert "baseline" in result.output and "optimized" in result.output
    (run,) = (tmp_path / "runs").iterdir()
    artifact = run / "artifact.json"
    calibration = json.loads((run / "calibration.json").read_text())  # ReAnchor on the real engine's distributions
    assert calibration["reanchor"]["fitted"][0]["observed"]["calls"] == calibration["val"]["before"]["n"]
    assert "calibration" in " ".join(result.output.split())  # kept weights get a column, a kept argmax a note

    body_file = tmp_path / "request.json"
    assert invoke("export", "--artifact", str(artifact), "-o", str(body_file)).exit_code == 0
    body = json.loads(body_file.read_text())
    assert body["response_format"]["type"] == "json_schema" and body["temperature"] == 0.0
    filled = fill_image(body, "data:image/png;base64,AAAA")
    assert "{image}" not in json.dumps(filled) and "data:image/png;base64,AAAA" in json.dumps(filled)

    images = tmp_path / "inbox"
    images.mkdir()
    for i, (rel, _) in enumerate(synthetic_data.items[:3]):
        (images / f"img{i}.png").write_bytes((synthetic_data.root / rel).read_bytes())
    (images / "broken.jpg").write_bytes(bad_images["corrupt"].read_bytes())
    out = tmp_path / "preds.csv"
    result = invoke("predict", str(images), "--artifact", str(artifact), "-o", str(out))
    assert result.exit_code == 1, result.output  # went through, but broken.jpg has no row
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label,confidence,valid,raw" and len(lines) == 4
    (failure,) = map(json.loads, (tmp_path / "preds.failures.jsonl").read_text().splitlines())
    assert failure["id"].endswith("broken.jpg") and failure["stage"] == "read"
    said = " ".join(result.output.split())  # rich wraps long lines at the runner's width
    assert "1 images have no row" in said and "1 unreadable" in said

    (run / "report.html").unlink()
    assert invoke("report", str(run)).exit_code == 0 and (run / "report.html").is_file()

    rerun = invoke("evaluate", str(path), "--artifact", str(artifact), "--split", "val")
    assert rerun.exit_code == 0, rerun.output
    frozen_val = json.loads(artifact.read_text())["metrics"]["val"]["accuracy"]
    newest = max((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert json.loads((newest / "metrics.json").read_text())["accuracy"] == frozen_val


def test_tampered_artifact_is_refused_without_traceback(tmp_path):
    fake = tmp_path / "artifact.json"
    fake.write_text('{"format": "vlmopt.artifact", "format_version": 1, "sha256": "0"}')
    result = invoke("export", "--artifact", str(fake))
    assert result.exit_code == 2 and "sha256 mismatch" in result.output and "Traceback" not in result.output
