"""`predict_on_ray` on a local Ray (started here, CPU only, loopback only): the rows single-machine predict writes.

Two in-process actors on the tiny random Idefics3 each load the artifact and the model once; the
shards they write hold, row for row, what `predict_to_file` writes for the same files — and a
corrupt file is the same failure row. A rerun finds every id in the shards and predicts nothing.
"""

import sys
from pathlib import Path

import pytest

from test_predict_stream import WEIGHTS, failures_of, invoke, rows_of, shapes_artifact
from vlmopt.artifacts import load_artifact
from vlmopt.config import TaskConfig
from vlmopt.predict import predict_to_file
from vlmopt.predict.ray_runner import predict_on_ray, read_output_rows
from vlmopt.serving.factory import close_lm, create_lm
from vlmopt.testing.images import make_image_dataset

ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]


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

    lm = create_lm(cfg)
    try:
        local = predict_to_file(frozen, [data.folder], tmp_path / "local.jsonl", lm=lm, num_threads=1)
    finally:
        close_lm(lm)
    out = tmp_path / "labels.parquet"
    summary = predict_on_ray(artifact, [data.folder], out, cfg=cfg, actors=2, batch_size=3)

    assert (summary.total, summary.predicted, summary.n_failed, summary.skipped) == (13, 12, 1, 0)
    assert summary.exit_code == local.exit_code == 1 and summary.labels == local.labels
    expected = {row["id"]: row for row in rows_of(tmp_path / "local.jsonl")}
    got = {row["id"]: row for row in rows_of(out)}  # pyarrow reads the folder of Ray's shards
    assert sorted(got) == sorted(expected) and len(read_output_rows(out)) == 12
    for item_id, row in got.items():
        want = expected[item_id]
        assert (row["label"], row["valid"], row["raw"]) == (want["label"], want["valid"], want["raw"]), item_id
        assert row["confidence"] == pytest.approx(want["confidence"], abs=1e-6)
    assert failures_of(out) == failures_of(tmp_path / "local.jsonl")  # the corrupt file: same stage, reason

    rerun = predict_on_ray(artifact, [data.folder], out, cfg=cfg, actors=1)
    assert (rerun.skipped, rerun.predicted, rerun.n_failed) == (12, 0, 1)  # only broken.png tried again


def _cli_args(tmp_path: Path) -> list:
    data = make_image_dataset(tmp_path / "data", n_per_class=1)
    return ["predict", data.folder, "--artifact", shapes_artifact(tmp_path / "artifact.json", "tiny")]


def test_ray_not_installed_is_one_line_saying_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does without the extra
    result = invoke(*_cli_args(tmp_path), "--ray", "-o", tmp_path / "out.parquet")
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "pip install 'vlmopt[ray]'" in " ".join(result.stderr.split())


@pytest.mark.parametrize(("extra", "said"), [
    (["-o", "out.csv"], "folder of shards named .parquet or .jsonl"),
    (["-o", "out.parquet", "--max-failures", "3"], "not applied on Ray"),
])
def test_ray_options_a_cluster_run_cannot_honour_are_refused(tmp_path, monkeypatch, extra, said):
    monkeypatch.chdir(tmp_path)
    result = invoke(*_cli_args(tmp_path), "--ray", *extra)
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.stderr.split()) and "Traceback" not in result.output
