"""An abstaining artifact decides alike in-process and on the real vLLM CPU server (the session's).

Both ``evaluate --artifact`` and ``predict`` run the frozen program, whose ``forward`` applies the
threshold to the label distribution the backend measured; so each backend's abstained rows must be
the same images. The model is the tiny random Idefics3: its max label probability on solid colours
spreads over ~0.33-0.48, and the backends agree within 0.02 per label (``test_vllm_e2e``). The
images kept are those whose in-process confidence lies at least ``MARGIN`` from the threshold, so
those numerics cannot decide; everything else — loading, the decision, the rows — must agree.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmopt.artifacts import load_artifact, save_artifact
from vlmopt.config import parse_config
from vlmopt.optimizers.abstention import RULE
from vlmopt.pipeline import evaluate_task
from vlmopt.predict import predict_to_file
from vlmopt.programs import create_program
from vlmopt.serving.factory import create_lm

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SHAPES = ["circle", "square", "triangle"]
MARGIN = 0.03
"""|confidence - threshold| of every kept image: above the backends' 0.02 per-label agreement."""


def _solid_colours(folder, n: int) -> None:
    rng = np.random.default_rng(3)
    for i in range(n):
        label = SHAPES[i % len(SHAPES)]
        (folder / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64), tuple(int(x) for x in rng.integers(0, 256, 3))).save(folder / label / f"{i:02d}.png")


def _config(folder, tmp_path, **backend):
    return parse_config({
        "name": "abstain-vllm", "model": {"id": backend.pop("model"), "max_new_tokens": 32},
        "backend": backend or {"kind": "transformers"},
        "dataset": {"source": str(folder), "kind": "imagefolder", "max_image_side": 64},
        "task": {"labels": SHAPES},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 2},
    })


def _rows(path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text().splitlines())}


def test_evaluate_and_predict_abstain_on_the_same_images_in_process_and_on_vllm(vllm_server, tiny_idefics3_dir,
                                                                               tmp_path):
    candidates = tmp_path / "candidates"
    _solid_colours(candidates, 40)
    _, measured = evaluate_task(_config(candidates, tmp_path, model=str(tiny_idefics3_dir)), split="all")
    confidence = {r.image_ref: max(r.probabilities.values()) for r in measured.records}
    ranked = sorted(confidence.values())
    gaps = [(b - a, (a + b) / 2) for a, b in pairwise(ranked[len(ranked) // 4:-5])]
    threshold = max(gaps)[1]  # the widest gap away from the ends, so both sides keep images
    kept = tmp_path / "data"
    for ref, value in confidence.items():
        if abs(value - threshold) >= MARGIN:
            source = candidates / ref.split("/")[-2] / ref.split("/")[-1]
            (kept / source.parent.name).mkdir(parents=True, exist_ok=True)
            (kept / source.parent.name / source.name).write_bytes(source.read_bytes())

    local_cfg = _config(kept, tmp_path, model=str(tiny_idefics3_dir))
    program = create_program(local_cfg.task, SHAPES)
    program.abstention = {"threshold": threshold, "confidence": "max_prob", "rule": RULE,
                          "goal": {"coverage": 0.5}, "chosen_on": "val", "val": {}}
    artifact = save_artifact(program, local_cfg, SHAPES, tmp_path / "artifact.json", metrics={}, provenance={})
    remote_cfg = _config(kept, tmp_path, model=str(tiny_idefics3_dir), kind="openai", base_url=vllm_server.base_url,
                         served_model_name=vllm_server.model, timeout_s=60)

    frozen = load_artifact(artifact, expected_labels=SHAPES)
    paths = sorted(str(p) for p in kept.rglob("*.png"))
    decided = {}
    for name, cfg in (("in-process", local_cfg), ("vllm", remote_cfg)):
        _, outcome = evaluate_task(cfg, split="all", artifact=artifact)
        predict_to_file(frozen, paths, tmp_path / f"{name}.jsonl", lm=lambda cfg=cfg: create_lm(cfg), num_threads=2)
        rows = _rows(tmp_path / f"{name}.jsonl")
        evaluated = {r.image_ref: r.abstained for r in outcome.records}
        assert evaluated == {path: row["abstained"] for path, row in rows.items()}, name  # evaluate = predict
        assert outcome.metrics["selective"]["n_abstained"] == sum(evaluated.values())
        decided[name] = (evaluated, rows)

    (local, local_rows), (remote, remote_rows) = decided["in-process"], decided["vllm"]
    assert local == remote  # the same images abstained on, on both backends
    assert 3 <= sum(local.values()) <= len(local) - 3, "both sides of the threshold must hold images"
    assert local == {path: confidence[str(candidates / Path(path).relative_to(kept))] < threshold for path in local}
    for path, row in local_rows.items():
        assert remote_rows[path]["top_labels"][0]["probability"] == pytest.approx(
            row["top_labels"][0]["probability"], abs=0.02)
