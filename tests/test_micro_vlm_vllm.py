"""The optimized micro-VLM artifact replayed through the real vLLM CPU server agrees with the
in-process engine on at least 99% of images; each difference is listed in the failure message.
A calibrated artifact (ReAnchor's weights) decides on the label probabilities the vLLM backend
measures, and its gain over the argmax holds there. Its labels are *not* asserted to agree with
in-process: under the wrong instruction the weights leave the decision to the two labels the
model gives under 2% each, where the backends' small numeric differences decide."""

import json

import pytest

from test_micro_vlm_optimize import calibrated_config
from vlmopt.config import parse_config
from vlmopt.demo import offline_demo_config
from vlmopt.demo.micro_vlm import micro_vlm_dir
from vlmopt.demo.shapes_task import write_micro_task_dataset
from vlmopt.pipeline import evaluate_task, optimize_task
from vlmopt.serving.vllm_server import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_artifact_on_vllm_agrees_with_in_process(vllm_python, tmp_path):
    demo_cfg = offline_demo_config(tmp_path / "opt")
    outcome = optimize_task(demo_cfg)
    calibrated = optimize_task(calibrated_config(tmp_path / "calibrated")).artifact
    data = write_micro_task_dataset(tmp_path / "replay", attribute="row", n_per_class=40, seed=7)
    base = parse_config({**demo_cfg.model_dump(),
                         "dataset": {"source": str(data), "kind": "imagefolder", "max_image_side": 64},
                         "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"),
                                 "num_threads": 4}})
    _, local = evaluate_task(base, split="all", artifact=outcome.artifact)
    _, local_calibrated = evaluate_task(base, split="all", artifact=calibrated)

    with VLLMServer(str(micro_vlm_dir()), python=vllm_python, served_model_name="micro-vlm",
                    limit_mm_per_prompt={"image": 4}, extra_args=["--enforce-eager"],
                    log_path=tmp_path / "vllm.log") as server:
        remote_cfg = parse_config({**base.model_dump(), "backend": {
            "kind": "openai", "base_url": server.base_url, "served_model_name": "micro-vlm",
            "label_probabilities": False, "timeout_s": 60}})
        _, remote = evaluate_task(remote_cfg, split="all", artifact=outcome.artifact)
        measured_cfg = parse_config({**remote_cfg.model_dump(), "backend": {
            **remote_cfg.backend.model_dump(), "label_probabilities": True}})
        _, remote_calibrated = evaluate_task(measured_cfg, split="all", artifact=calibrated)

    assert_agree(local, remote)
    assert remote.metrics["accuracy"] >= 0.9
    argmax = [json.loads(r.raw)["label"] == r.gold for r in remote_calibrated.records]  # the generated answer
    assert remote_calibrated.metrics["accuracy"] >= sum(argmax) / len(argmax) + 0.2, (
        remote_calibrated.metrics["accuracy"], local_calibrated.metrics["accuracy"])


def assert_agree(local, remote):
    here = {r.id: r.predicted for r in local.records}
    there = {r.id: r.predicted for r in remote.records}
    assert set(here) == set(there) and len(here) == 120
    differences = {i: (here[i], there[i]) for i in here if here[i] != there[i]}
    agreement = 1 - len(differences) / len(here)
    assert agreement >= 0.99, f"agreement {agreement:.3f}; differences (in-process, vLLM): {differences}"
