"""`vlmopt predict` as a nightly job runs it: killed and rerun, a dead server, too many failures, evaluate's rows.

Real commands on the tiny random Idefics3 (in-process) and real network failures (a loopback
port nobody listens on). The kill is a real SIGKILL of a `vlmopt predict` subprocess mid-run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from fixtures_vllm import loopback_server
from vlmopt.artifacts import load_artifact, save_artifact
from vlmopt.cli import app
from vlmopt.config import TaskConfig
from vlmopt.predict import predict_to_file
from vlmopt.programs import create_program
from vlmopt.serving.factory import close_lm, create_lm
from vlmopt.serving.vllm_server import free_port
from vlmopt.testing.images import make_image_dataset

REPO = Path(__file__).resolve().parents[1]
SHAPES = ["circle", "square", "triangle"]
WEIGHTS = {"circle": 4.0, "square": 1.0, "triangle": 0.25}  # a calibrated decision that moves answers


def shapes_artifact(path: Path, model_id: str, weights: dict[str, float] | None = None) -> Path:
    """An artifact of the plain shapes program on ``model_id``, with ``weights`` as its calibrated decision."""
    cfg = TaskConfig(model={"id": model_id, "max_new_tokens": 16}, dataset={"source": "-", "max_image_side": 64},
                     task={"labels": SHAPES})
    program = create_program(cfg.task, SHAPES)
    program.label_weights = weights
    return save_artifact(program, cfg, SHAPES, path, metrics={}, provenance={})


def invoke(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def rows_of(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    if path.suffix == ".csv":
        import pandas as pd

        return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    return [json.loads(line) for line in path.read_text().splitlines()]


def failures_of(output: Path) -> list[dict]:
    return [json.loads(line) for line in output.with_name(f"{output.stem}.failures.jsonl").read_text().splitlines()]


def dead_server_config(tmp_path: Path) -> Path:
    """A task whose backend is a loopback port nobody listens on: every call fails at once (no retries)."""
    cfg = {"model": {"id": "tiny", "max_new_tokens": 16}, "dataset": {"source": "-", "max_image_side": 64},
           "task": {"labels": SHAPES},
           "backend": {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "num_retries": 0,
                       "timeout_s": 5}}
    path = tmp_path / "dead.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_dead_server_and_an_unreadable_file_are_failure_rows(tmp_path, bad_images):
    data = make_image_dataset(tmp_path / "data", n_per_class=1)
    inbox = data.folder
    (inbox / "circle" / "broken.png").write_bytes(bad_images["corrupt"].read_bytes())
    artifact = shapes_artifact(tmp_path / "artifact.json", "tiny")
    out = tmp_path / "labels.jsonl"
    result = invoke("predict", inbox, "--artifact", artifact, "--config", dead_server_config(tmp_path),
                    "-o", out, "--max-failures", "100%")
    assert result.exit_code == 1, result.output  # the run went through; not every image has a row
    assert "Traceback" not in result.output and "4 images have no row" in " ".join(result.stderr.split())
    failures = {Path(f["id"]).name: f for f in failures_of(out)}
    assert sorted(failures) == ["broken.png", "circle_000.png", "square_000.png", "triangle_000.png"]
    assert failures["broken.png"]["stage"] == "read" and failures["broken.png"]["reason"] == "corrupt"
    calls = [f for name, f in failures.items() if name != "broken.png"]
    assert all(f["stage"] == "predict" and f["reason"] == "call_failed" for f in calls)
    assert all("Connection refused" in f["message"] for f in calls)
    assert rows_of(out) == []


def test_max_failures_stops_the_run_with_exit_2_and_says_why(tmp_path):
    data = make_image_dataset(tmp_path / "data", n_per_class=10)
    artifact = shapes_artifact(tmp_path / "artifact.json", "tiny")
    out = tmp_path / "labels.csv"
    result = invoke("predict", data.folder, "--artifact", artifact, "--config", dead_server_config(tmp_path),
                    "-o", out, "--max-failures", "2", "--num-threads", "1")
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("stopped:")]
    assert "more than --max-failures allows (2)" in line and "Connection refused" in line
    assert "rerun the same command" in line
    n_failed = len(failures_of(out))
    assert 3 <= n_failed < 30  # stopped at the third failure, the calls in flight finished
    said = " ".join(result.stdout.split())
    assert re.search(rf"not attempted \(stopped\) │ {30 - n_failed} ", said), said
    assert rows_of(out) == []



def rerun_counts(command: list[str], env: dict[str, str]) -> tuple[int, int]:
    """Run ``command`` (a ``vlmopt predict``) to completion; (skipped, predicted) from its summary table."""
    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    said = " ".join(rerun.stdout.split())
    skipped = int(re.search(r"already in the output \(skipped\) │ (\d+)", said).group(1))
    predicted = int(re.search(r"predicted this run │ (\d+)", said).group(1))
    return skipped, predicted

@pytest.mark.slow
def test_a_rerun_after_the_server_failed_predicts_only_what_is_missing(tmp_path, tiny_idefics3_dir, bad_images):
    data = make_image_dataset(tmp_path / "data", n_per_class=2)
    (data.folder / "circle" / "broken.png").write_bytes(bad_images["corrupt"].read_bytes())
    artifact = shapes_artifact(tmp_path / "artifact.json", str(tiny_idefics3_dir))
    out = tmp_path / "labels.parquet"
    first = invoke("predict", data.folder, "--artifact", artifact, "--config", dead_server_config(tmp_path),
                   "-o", out, "--max-failures", "1.0")
    assert first.exit_code == 1 and len(failures_of(out)) == 7
    rerun = invoke("predict", data.folder, "--artifact", artifact, "-o", out)  # in-process this time
    assert rerun.exit_code == 1, rerun.output  # broken.png still has no row
    assert [f["id"] for f in failures_of(out)] == [str(data.folder / "circle" / "broken.png")]
    assert sorted(r["id"] for r in rows_of(out)) == sorted(str(data.root / rel) for rel, _ in data.items)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_sigkill_mid_run_then_rerun_predicts_every_file_exactly_once(tmp_path, tiny_idefics3_dir, suffix):
    data = make_image_dataset(tmp_path / "data", n_per_class=10, seed=3)
    artifact = shapes_artifact(tmp_path / "artifact.json", str(tiny_idefics3_dir))
    out = tmp_path / f"labels{suffix}"
    command = [sys.executable, "-m", "vlmopt.cli", "predict", str(data.folder), "--artifact", str(artifact),
               "-o", str(out), "--num-threads", "1"]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)}
    written = {".jsonl": lambda: out, ".csv": lambda: out, ".parquet": lambda: out / "_pending.jsonl"}[suffix]

    def n_rows() -> int:
        path = written()
        lines = path.read_text().count("\n") if path.exists() else 0
        return lines - 1 if suffix == ".csv" and lines else lines

    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and n_rows() < 5:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    kept = n_rows()
    assert 5 <= kept < 30, "the kill came too late to be mid-run"

    skipped, predicted = rerun_counts(command, env)
    assert skipped >= kept and skipped + predicted == 30  # the kill lost only rows in flight, none twice
    ids = [row["id"] for row in rows_of(out)]
    assert sorted(ids) == sorted(str(data.root / rel) for rel, _ in data.items)  # every file exactly once
    assert failures_of(out) == []


@pytest.mark.slow
def test_rows_and_decision_equal_evaluates_on_the_same_manifest(tmp_path, tiny_idefics3_dir):
    data = make_image_dataset(tmp_path / "data", n_per_class=4, seed=7)
    weighted = shapes_artifact(tmp_path / "weighted.json", str(tiny_idefics3_dir), WEIGHTS)
    plain = shapes_artifact(tmp_path / "plain.json", str(tiny_idefics3_dir))
    cfg = {"name": "shapes", "model": {"id": str(tiny_idefics3_dir), "max_new_tokens": 16},
           "dataset": {"source": str(data.manifest_csv), "kind": "manifest", "max_image_side": 64},
           "task": {"labels": SHAPES},
           "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 1}}
    config = tmp_path / "shapes.yaml"
    config.write_text(yaml.safe_dump(cfg))

    evaluated = invoke("evaluate", config, "--artifact", weighted, "--split", "all")
    assert evaluated.exit_code == 0, evaluated.output
    (run,) = (tmp_path / "runs").iterdir()
    records = {r["id"]: r for r in map(json.loads, (run / "predictions.jsonl").read_text().splitlines())}

    def predict(artifact: Path, name: str) -> dict[str, dict]:
        out = tmp_path / name
        result = invoke("predict", data.manifest_csv, "--artifact", artifact, "--config", config, "-o", out,
                        "--num-threads", "1")
        assert result.exit_code == 0, result.output
        return {row["id"]: row for row in rows_of(out)}

    rows = predict(weighted, "weighted.jsonl")
    assert sorted(rows) == sorted(records) == sorted(rel for rel, _ in data.items)  # manifest cells are the ids
    for item_id, row in rows.items():
        record = records[item_id]
        assert (row["label"], row["valid"], row["raw"]) == (record["predicted"], record["valid"], record["raw"])
        assert row["confidence"] == pytest.approx(record["confidence"], abs=1e-6)
        assert row["confidence"] == pytest.approx(record["probabilities"][row["label"]], abs=1e-6)

    unweighted = predict(plain, "plain.jsonl")
    assert any(unweighted[i]["label"] != rows[i]["label"] for i in rows)  # the weights decided those rows


@pytest.mark.slow
def test_a_notebook_call_predicts_a_folder_and_keeps_no_prompts_in_dspy_history(tmp_path, tiny_idefics3_dir):
    """DSPy keeps the last 10,000 calls, base64 images included: a night's run must not grow that."""
    from dspy.clients.base_lm import GLOBAL_HISTORY

    data = make_image_dataset(tmp_path / "data", n_per_class=2)
    frozen = load_artifact(shapes_artifact(tmp_path / "artifact.json", str(tiny_idefics3_dir)))
    lm = create_lm(TaskConfig(model={"id": str(tiny_idefics3_dir)}, dataset={"source": "-"}, task=frozen.task))
    last_before = GLOBAL_HISTORY[-1:]
    try:
        summary = predict_to_file(frozen, [data.folder], tmp_path / "labels.jsonl", lm=lm, num_threads=2)
    finally:
        close_lm(lm)
    assert summary.exit_code == 0 and summary.predicted == summary.total == 6
    assert sum(summary.labels.values()) == 6 and summary.skipped == 0 and summary.n_failed == 0
    assert GLOBAL_HISTORY[-1:] == last_before and lm.history == []


def serving_folder(folder: Path):
    """A loopback HTTP server for ``folder``'s files (the stand-in for a bucket's https:// URLs)."""

    class Files(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    return loopback_server(Files)


def test_a_manifest_of_urls_is_predicted_like_the_files_and_bad_urls_are_failure_rows(tmp_path, tiny_idefics3_dir):
    data = make_image_dataset(tmp_path / "data", n_per_class=2, seed=8)
    artifact = shapes_artifact(tmp_path / "artifact.json", str(tiny_idefics3_dir))
    by_path = tmp_path / "by_path.jsonl"
    assert invoke("predict", data.folder, "--artifact", artifact, "-o", by_path, "--num-threads", "1").exit_code == 0
    with serving_folder(data.root) as root:
        urls = [f"{root}/{rel}" for rel, _ in data.items]
        dead = f"http://127.0.0.1:{free_port()}/nobody/listens.png"
        manifest = tmp_path / "urls.csv"
        manifest.write_text("image\n" + "\n".join([*urls, f"{root}/no/such.png", dead]) + "\n")
        out = tmp_path / "by_url.jsonl"
        result = invoke("predict", manifest, "--artifact", artifact, "-o", out, "--num-threads", "1")
    assert result.exit_code == 1, result.output  # two images without a row
    expected = {Path(row["id"]).relative_to(data.root).as_posix(): row for row in rows_of(by_path)}
    got = {row["id"].removeprefix(f"{root}/"): row for row in rows_of(out)}
    assert sorted(got) == sorted(expected)
    for rel, row in got.items():
        assert (row["label"], row["raw"], row["confidence"]) == (
            expected[rel]["label"], expected[rel]["raw"], expected[rel]["confidence"]), rel
    reasons = {f["id"]: (f["stage"], f["reason"]) for f in failures_of(out)}
    assert reasons == {f"{root}/no/such.png": ("read", "missing"), dead: ("read", "unreachable")}


def test_an_output_of_another_artifact_is_refused_before_any_work(tmp_path):
    data = make_image_dataset(tmp_path / "data", n_per_class=1)
    first = shapes_artifact(tmp_path / "first.json", "tiny")
    other = shapes_artifact(tmp_path / "other.json", "tiny", WEIGHTS)
    out = tmp_path / "labels.jsonl"
    out.write_text(json.dumps({"id": "earlier.png", "label": "circle", "confidence": 0.5, "valid": True,
                               "raw": ""}) + "\n")
    dead = dead_server_config(tmp_path)
    assert invoke("predict", data.folder, "--artifact", first, "--config", dead, "-o", out,
                  "--max-failures", "100%").exit_code == 1  # adopts the unstamped output; the calls fail
    result = invoke("predict", data.folder, "--artifact", other, "--config", dead, "-o", out)
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    sha = load_artifact(first).artifact.sha256[:12]
    assert f"{out} holds rows of another artifact ({first}, sha256 {sha})" in line and "give another -o" in line
    assert len(failures_of(out)) == 0  # refused before any call: the failures file was not even started
    again = invoke("predict", data.folder, "--artifact", first, "--config", dead, "-o", out, "--max-failures", "100%")
    assert again.exit_code == 1 and len(failures_of(out)) == 3  # the same artifact resumes
