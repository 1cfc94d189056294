"""`predict_on_ray` on a local Ray (started here, CPU only, loopback only): the rows single-machine predict writes.

Two in-process actors on the tiny random Idefics3 each load the artifact and the model once; the
output they fill holds, row for row, what `predict_to_file` writes for the same files — and a
corrupt file is the same failure row. A rerun finds every id and predicts nothing. The actors
can also be clients of the real vLLM CPU server; a Ray driver killed mid-run keeps the blocks it
wrote, and one-machine predict resumes from them; `--max-failures` stops a Ray run as it stops
a local one.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_predict_stream import (
    REPO,
    WEIGHTS,
    dead_server_config,
    failures_of,
    invoke,
    rerun_counts,
    rows_of,
    shapes_artifact,
)
from vlmopt.artifacts import load_artifact
from vlmopt.config import TaskConfig
from vlmopt.predict import predict_to_file
from vlmopt.predict.ray_runner import predict_on_ray
from vlmopt.serving.factory import create_lm
from vlmopt.testing.images import make_image_dataset

ray = pytest.importorskip("ray")


@pytest.fixture
def local_ray():
    # the actors import this checkout's vlmopt, whatever the venv's editable install points at
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}})
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_actors_write_the_rows_single_machine_predict_writes(tmp_path, tiny_idefics3_dir, bad_images, local_ray):
    data = make_image_dataset(tmp_path / "data", n_per_class=4, seed=5)  # 12 images
    (data.folder / "circle" / "broken.png").write_bytes(bad_images["corrupt"].read_bytes())
    artifact = shapes_artifact(tmp_path / "artifact.json", str(tiny_idefics3_dir), WEIGHTS)
    frozen = load_artifact(artifact)
    cfg = TaskConfig(model={"id": str(tiny_idefics3_dir), "max_new_tokens": 16},
                     dataset={"source": "-", "max_image_side": 64}, task=frozen.task)

    local = predict_to_file(frozen, [data.folder], tmp_path / "local.jsonl", lm=lambda: create_lm(cfg),
                            num_threads=1)  # the LM it builds, it closes
    out = tmp_path / "labels.parquet"
    summary = predict_on_ray(artifact, [data.folder], out, cfg=cfg, actors=2, batch_size=3)

    assert (summary.total, summary.predicted, summary.n_failed, summary.skipped) == (13, 12, 1, 0)
    assert summary.exit_code == local.exit_code == 1 and summary.labels == local.labels
    expected = {row["id"]: row for row in rows_of(tmp_path / "local.jsonl")}
    got = rows_of(out)  # pyarrow reads the folder of parts
    assert sorted(row["id"] for row in got) == sorted(expected) and len(got) == 12
    assert_same_rows(got, expected)
    assert failures_of(out) == failures_of(tmp_path / "local.jsonl")  # the corrupt file: same stage, reason

    rerun = predict_on_ray(artifact, [data.folder], out, cfg=cfg, actors=1)
    assert (rerun.skipped, rerun.predicted, rerun.n_failed) == (12, 0, 1)  # only broken.png tried again


def assert_same_rows(got: list[dict], expected: dict[str, dict]) -> None:
    for row in got:
        want = expected[row["id"]]
        assert (row["label"], row["valid"], row["raw"]) == (want["label"], want["valid"], want["raw"]), row["id"]
        assert row["confidence"] == pytest.approx(want["confidence"], abs=1e-6)


@pytest.mark.slow
def test_ray_actors_as_clients_of_the_vllm_server_write_the_rows_one_machine_writes(tmp_path, vllm_server,
                                                                                      local_ray):
    data = make_image_dataset(tmp_path / "data", n_per_class=3, seed=2)
    artifact = shapes_artifact(tmp_path / "artifact.json", vllm_server.model)
    frozen = load_artifact(artifact)
    cfg = TaskConfig(model={"id": vllm_server.model, "max_new_tokens": 16},
                     dataset={"source": "-", "max_image_side": 64}, task=frozen.task,
                     backend={"kind": "openai", "base_url": vllm_server.base_url})
    local = predict_to_file(frozen, [data.folder], tmp_path / "local.jsonl", lm=lambda: create_lm(cfg),
                            num_threads=2)  # the LM it builds, it closes
    out = tmp_path / "labels.jsonl"
    summary = predict_on_ray(artifact, [data.folder], out, cfg=cfg, actors=2, num_threads=2, batch_size=2)
    assert (summary.total, summary.predicted, summary.exit_code) == (9, 9, 0) and summary.labels == local.labels
    assert_same_rows(rows_of(out), {row["id"]: row for row in rows_of(tmp_path / "local.jsonl")})


@pytest.mark.slow
def test_max_failures_stops_a_ray_run_as_it_stops_a_local_one(tmp_path, local_ray):
    data = make_image_dataset(tmp_path / "data", n_per_class=8)  # 24 images, 3 blocks of 8
    artifact = shapes_artifact(tmp_path / "artifact.json", "tiny")
    out = tmp_path / "labels.parquet"
    result = invoke("predict", data.folder, "--artifact", artifact, "--config", dead_server_config(tmp_path),
                    "-o", out, "--ray", "--actors", "1", "--num-threads", "1", "--max-failures", "2")
    assert result.exit_code == 2, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("stopped:")]
    assert "more than --max-failures allows (2)" in line and "Connection refused" in line
    n_failed = len(failures_of(out))
    said = " ".join(result.stdout.split())
    assert 3 <= n_failed < 24 and re.search(rf"not attempted \(stopped\) │ {24 - n_failed} ", said), said
    assert rows_of(out) == []


@pytest.mark.slow
def test_a_ray_run_killed_mid_way_keeps_its_rows_and_one_machine_predict_finishes_it(tmp_path, tiny_idefics3_dir):
    data = make_image_dataset(tmp_path / "data", n_per_class=12, seed=4)  # 36 images, blocks of 8
    artifact = shapes_artifact(tmp_path / "artifact.json", str(tiny_idefics3_dir))
    out = tmp_path / "labels.jsonl"
    command = [sys.executable, "-m", "vlmopt.cli", "predict", str(data.folder), "--artifact", str(artifact),
               "-o", str(out), "--num-threads", "1"]
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "COLUMNS": "200", "PYTHONPATH": str(REPO)}

    def n_rows() -> int:
        return out.read_text().count("\n") if out.exists() else 0

    proc = subprocess.Popen([*command, "--ray", "--actors", "1"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and n_rows() < 8:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=60)
    kept = n_rows()
    assert 8 <= kept < 36, "the kill came too late to be mid-run"

    skipped, predicted = rerun_counts(command, env)
    assert skipped == kept and skipped + predicted == 36
    ids = [row["id"] for row in rows_of(out)]
    assert sorted(ids) == sorted(str(data.root / rel) for rel, _ in data.items)  # every file exactly once


def _cli_args(tmp_path: Path) -> list:
    data = make_image_dataset(tmp_path / "data", n_per_class=1)
    return ["predict", data.folder, "--artifact", shapes_artifact(tmp_path / "artifact.json", "tiny")]


def test_ray_not_installed_is_one_line_saying_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does without the extra
    result = invoke(*_cli_args(tmp_path), "--ray", "-o", tmp_path / "out.parquet")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "pip install 'vlmopt[ray]'" in " ".join(result.stderr.split())
