"""The vLLM path end to end on a real vLLM (CPU) server and the tiny Idefics3 model (random weights):

* label probabilities measured on the server agree with the in-process engine's;
* an exported request, POSTed by a plain HTTP client, replays the DSPy program's answer for every
  image of a val split — and carries exactly the messages DSPy sends;
* a server killed mid-run loses no finished prediction, names its address, records the failures,
  and a rerun against a restarted server asks it only for the missing items.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.request
from pathlib import Path

import dspy
import httpx
import pytest
from PIL import Image

from fixtures_vllm import shapes_config
from vlmopt.artifacts import load_artifact, save_artifact
from vlmopt.config import TaskSpec
from vlmopt.datasets import load_splits
from vlmopt.datasets.images import downscale_dspy_image
from vlmopt.evaluate import EvaluationInterrupted, evaluate_program
from vlmopt.export import export_request, fill_image
from vlmopt.pipeline import evaluate_task, optimize_task
from vlmopt.programs import create_program
from vlmopt.programs.confidence import label_confidence
from vlmopt.reports.run_dir import read_predictions
from vlmopt.serving.openai_lm import create_openai_lm
from vlmopt.serving.transformers_engine import create_lm as create_in_process_lm
from vlmopt.serving.vllm_probabilities import create_vllm_lm
from vlmopt.serving.vllm_server import VLLMServer, free_port
from vlmopt.testing.images import make_image_dataset

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SHAPES = ["circle", "square", "triangle"]

PROBABILITY_TOLERANCE = 0.02
"""|p_vllm - p_in_process| per label. vLLM serves the float32 checkpoint in bfloat16 (8-bit
mantissa): the in-process engine itself moves by <= 0.0005 between float32 and bfloat16 on these
prompts. The rest is the scoring context: Idefics3's template writes "Assistant: " before a
prefilled answer but "Assistant:" as the generation prompt (see vllm_probabilities), measured
<= 0.003. 0.02 is several times both, and far below the spread between labels (0.04 to 0.2)."""


def _solid_images() -> list[dspy.Image]:
    palette = [(220, 40, 40), (40, 200, 60), (30, 60, 220), (240, 220, 30)]
    return [dspy.Image(Image.new("RGB", (64, 64), rgb)) for rgb in palette]


def test_label_probabilities_agree_with_the_in_process_engine(vllm_server, tiny_idefics3_dir):
    program = create_program(TaskSpec(labels=SHAPES), SHAPES)
    in_process = create_in_process_lm(str(tiny_idefics3_dir), cache=False)
    served = create_vllm_lm(vllm_server.base_url, vllm_server.model, max_tokens=32, cache=False)
    argmax_checked = 0
    for image in _solid_images():
        with dspy.context(lm=in_process):
            expected, _ = label_confidence(program(image=image))
        with dspy.context(lm=served):
            prediction = program(image=image)
        probabilities, confidence = label_confidence(prediction)

        assert set(probabilities) == set(SHAPES)
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-9)
        # The answer is the server's generated label; the confidence is that label's probability.
        assert json.loads(prediction.raw_output) == {"label": prediction.label}
        assert confidence == probabilities[prediction.label]
        for label in SHAPES:
            near = pytest.approx(expected[label], abs=PROBABILITY_TOLERANCE)
            assert probabilities[label] == near, (label, probabilities, expected)
        first, second = sorted(expected.values(), reverse=True)[:2]
        if first - second > 2 * PROBABILITY_TOLERANCE:
            assert max(probabilities, key=probabilities.get) == max(expected, key=expected.get)
            argmax_checked += 1
    assert argmax_checked >= 2, "the random model gave too few clear-cut images to compare the argmax"


def _with_demos(program, train: list[dspy.Example], max_side: int):
    """The optimized program with one demo per class (the optimizer may well have picked zero-shot)."""
    demos, seen = [], set()
    for example in train:
        if example.label not in seen:
            seen.add(example.label)
            demos.append(example.copy(image=downscale_dspy_image(example.image, max_side)))
    with_demos = program.deepcopy()
    with_demos.predict.demos = demos
    return with_demos


def test_exported_request_replays_the_program_on_the_whole_val_set(vllm_server, recording_proxy, tmp_path):
    data = make_image_dataset(tmp_path / "data", n_per_class=5)
    cfg = shapes_config(data.folder, tmp_path, recording_proxy.base_url, vllm_server.model)
    outcome = optimize_task(cfg)
    splits = load_splits(cfg)
    demo_artifact = save_artifact(
        _with_demos(load_artifact(outcome.artifact).program, splits.train, cfg.optimizer.demo_max_image_side),
        cfg, splits.labels, tmp_path / "with_demos.json", metrics={}, provenance={})

    replayed_labels = []
    for artifact in (outcome.artifact, demo_artifact):
        frozen = load_artifact(artifact, expected_labels=SHAPES)
        template = export_request(frozen, model_name=vllm_server.model)
        lm = create_openai_lm(recording_proxy.base_url, vllm_server.model, max_tokens=32, cache=False)
        recording_proxy.requests.clear()
        program_run = evaluate_program(frozen.program, splits.val, lm=lm, task=frozen.task, labels=SHAPES,
                                       num_threads=1)
        assert not program_run.failed_ids
        sent = {_query_image(r["body"]): r["body"] for r in recording_proxy.requests}
        answers = {r.id: r.predicted for r in program_run.records}

        for example in splits.val:
            body = fill_image(template, example.image.url)
            wire = sent[example.image.url]
            # The artifact's prompt is exactly what DSPy sends (DSPy adds only the logprobs request).
            assert body["messages"] == wire["messages"]
            assert {k: v for k, v in wire.items() if k not in ("messages", "logprobs")} == \
                {k: v for k, v in body.items() if k != "messages"}
            reply = httpx.post(f"{vllm_server.base_url}/chat/completions", json=body, timeout=60).json()
            label = json.loads(reply["choices"][0]["message"]["content"])["label"]
            assert label == answers[str(example.id)], example.id
            replayed_labels.append(label)
        if artifact == demo_artifact:
            assert len(frozen.program.predict.demos) == len(SHAPES)
            assert sum(p["type"] == "image_url" for m in body["messages"] for p in _parts(m)) == len(SHAPES) + 1
    assert len(set(replayed_labels)) > 1, "every answer was the same label: the comparison would prove little"


def _parts(message: dict) -> list[dict]:
    return message["content"] if isinstance(message["content"], list) else []


def _query_image(body: dict) -> str:
    return next(p["image_url"]["url"] for p in reversed(_parts(body["messages"][-1])) if p["type"] == "image_url")


def _served_requests(root_url: str) -> int:
    with urllib.request.urlopen(f"{root_url}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    return int(sum(float(v) for v in re.findall(r"^vllm:request_success_total\{[^}]*\} (\S+)$", metrics, re.M)))


def _kill_after(run_root: Path, rows: int, server: VLLMServer) -> threading.Thread:
    """SIGKILL the server's process group once `rows` predictions are on disk."""
    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            files = list(run_root.glob("*/predictions.jsonl"))
            if files and len(files[0].read_text().splitlines()) >= rows:
                os.killpg(server.pid, signal.SIGKILL)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_killed_server_loses_nothing_and_the_rerun_asks_only_for_the_missing_items(vllm_server, tmp_path):
    data = make_image_dataset(tmp_path / "data", n_per_class=8)
    total = len(data.items)
    port = free_port()

    def server(log: str) -> VLLMServer:
        # --enforce-eager: no torch.compile warm-up, half the start time; same answers.
        return VLLMServer(vllm_server.server.model, python=vllm_server.server.python, port=port,
                          served_model_name=vllm_server.model, limit_mm_per_prompt={"image": 1},
                          extra_args=["--enforce-eager"], log_path=tmp_path / log)

    # label_probabilities off: one request per item, so the server's request count is the item count
    cfg = shapes_config(data.folder, tmp_path, f"http://127.0.0.1:{port}/v1", vllm_server.model,
                         timeout_s=10, num_retries=1, label_probabilities=False)
    first = server("first.log").start()
    try:
        watcher = _kill_after(tmp_path / "runs", rows=5, server=first)
        with pytest.raises(EvaluationInterrupted) as interrupted:
            evaluate_task(cfg, split="all")
        watcher.join()
    finally:
        first.stop()
    message = str(interrupted.value)
    assert f"127.0.0.1:{port}" in message, message

    (run_path,) = (tmp_path / "runs").iterdir()
    finished = read_predictions(run_path)
    failures = [json.loads(line) for line in (run_path / "failures.jsonl").read_text().splitlines()]
    assert 5 <= len(finished) < total
    assert failures and all(f"127.0.0.1:{port}" in f["reason"] and f["stage"] == "predict" for f in failures)
    assert not {r.id for r in finished} & {f["id"] for f in failures}

    with server("second.log") as restarted:
        rerun_run, rerun = evaluate_task(cfg, split="all")
        served = _served_requests(restarted.root_url)
    assert rerun_run.path != run_path
    assert len(rerun.records) == total and not rerun.failed_ids
    assert served == total - len(finished)
    rows = {r.id: r.predicted for r in rerun.records}
    assert all(rows[r.id] == r.predicted for r in finished)
