"""Finished run directories for the report, comparison and notebook tests.

Built with the real writers (``RunDir``, ``PredictionRecord``, ``compute_metrics``,
``plot_confusion_matrix``), so the reports are tested against exactly what a run leaves on disk.
Each run holds correct, misclassified and invalid rows; the expected facts are module constants
the tests assert against.
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import pytest

from vlmopt.config import TaskConfig
from vlmopt.metrics import compute_metrics
from vlmopt.metrics.records import PredictionRecord
from vlmopt.reports.plots import plot_confusion_matrix
from vlmopt.reports.run_dir import METRICS, RunDir
from vlmopt.testing.images import draw_shape

SHAPES = ["circle", "square", "triangle"]

# (id, gold, predicted or None for invalid, raw text, confidence)
SINGLE_LABEL_ROWS = [
    ("img_00", "circle", "circle", '{"label": "circle"}', 0.97),
    ("img_01", "circle", "circle", '{"label": "circle"}', 0.91),
    ("img_02", "circle", "square", '{"label": "square"}', 0.55),
    ("img_03", "circle", "circle", '{"label": "circle"}', None),
    ("img_04", "square", "square", '{"label": "square"}', 0.88),
    ("img_05", "square", "square", '{"label": "square"}', 0.93),
    ("img_06", "square", None, "It is a pug!", None),
    ("img_07", "square", "triangle", '{"label": "triangle"}', 0.41),
    ("img_08", "triangle", "triangle", '{"label": "triangle"}', 0.99),
    ("img_09", "triangle", "triangle", '{"label": "triangle"}', 0.62),
    ("img_10", "triangle", None, '{"label": "hexagon"}', None),
    ("img_11", "triangle", "circle", '{"label": "circle"}', 0.35),
]
WRONG_IDS = {"img_02", "img_06", "img_07", "img_10", "img_11"}
INVALID_IDS = {"img_06", "img_10"}
FAILURES = [("img_12", "predict", "TimeoutError: server did not answer in 120 s"),
            ("img_13", "image", "truncated: image file is truncated")]
SPLIT_SIZES = {"train": 6, "val": 10, "test": 14}

# The "optimized" run of the same images: img_02 and img_06 fixed, img_09 broken.
OPTIMIZED_CHANGES = {"img_02": "circle", "img_06": "square", "img_09": "square"}

MULTI_LABEL = ["cat", "dog", "indoor"]
MULTI_LABEL_ROWS = [
    ("ml_0", ["cat", "indoor"], ["indoor", "cat"], '{"labels": ["indoor", "cat"]}', 0.8),
    ("ml_1", ["dog"], ["dog", "indoor"], '{"labels": ["dog", "indoor"]}', 0.6),
    ("ml_2", ["cat"], None, "cat and maybe a dog", None),
    ("ml_3", ["dog", "indoor"], ["dog", "indoor"], '{"labels": ["dog", "indoor"]}', 0.9),
]
FIELDS = {"make": ["audi", "bmw"], "year": ["2011", "2012"]}
MULTI_FIELD_ROWS = [
    ("mf_0", {"make": "audi", "year": "2012"}, {"make": "audi", "year": "2012"}, "{}", 0.7),
    ("mf_1", {"make": "bmw", "year": "2011"}, {"make": "bmw", "year": "2012"}, "{}", 0.5),
    ("mf_2", {"make": "audi", "year": "2011"}, None, "an audi, 2011-ish", None),
]

COMPILED_PROMPT = {
    "messages": [
        {"role": "system", "content": "Classify the shape in the picture."},
        {"role": "user", "content": [
            {"type": "text", "text": "Shape?"}, {"type": "image_url", "image_url": {"url": "{image}"}},
        ]},
    ],
    "response_format": {"type": "json_schema", "json_schema": {"name": "answer"}},
}


def thumbnail(shape: str, seed: int) -> str:
    """A small JPEG data URI of a drawn shape, the form the pipeline stores per prediction."""
    img = draw_shape(shape, size=64, rng=random.Random(seed))
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _records(rows, shape_of) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            id=item_id,
            gold=gold,
            predicted=pred,
            raw=raw,
            valid=pred is not None,
            confidence=conf,
            latency_s=0.1 + 0.01 * i,
            prompt_tokens=180,
            completion_tokens=6,
            image_ref=f"data/{item_id}.png",
            thumbnail=thumbnail(shape_of(gold), seed=i),
        )
        for i, (item_id, gold, pred, raw, conf) in enumerate(rows)
    ]


def write_run(root: Path, name: str, records: list[PredictionRecord], *, task: dict, metrics_args: dict,
              failures=(), extra_metrics: dict | None = None) -> Path:
    """Write a finished run directory exactly as the evaluate pipeline does."""
    run = RunDir.create(root, name)
    run.write_config(TaskConfig(name=name, dataset={"source": "data/shapes"}, task=task))
    for record in records:
        run.append_prediction(record)
    for item_id, stage, reason in failures:
        run.append_failure(item_id, stage, reason)
    metrics = compute_metrics(records, seed=0, n_boot=200, **metrics_args)
    metrics.update(extra_metrics or {})
    run.write_json(METRICS, metrics)
    if "confusion" in metrics:
        plot_confusion_matrix(metrics["confusion"], run.path / "confusion.png")
    return run.path


def single_label_run(root: Path, name: str = "shapes", changes: dict[str, str] | None = None) -> Path:
    """The SINGLE_LABEL_ROWS run; ``changes`` (id -> label) replaces some answers with valid ones."""
    changes = changes or {}
    rows = [
        (i, gold, changes[i], json.dumps({"label": changes[i]}), conf) if i in changes else (i, gold, pred, raw, conf)
        for i, gold, pred, raw, conf in SINGLE_LABEL_ROWS
    ]
    return write_run(
        root, name, _records(rows, lambda gold: gold),
        task={"labels": SHAPES},
        metrics_args={"output_kind": "single_label", "labels": SHAPES},
        failures=FAILURES,
        extra_metrics={"split": "test", "n_failed": 1, "n_skipped": 1, "split_sizes": SPLIT_SIZES},
    )


@pytest.fixture(scope="session")
def fixture_run_dir(tmp_path_factory) -> Path:
    """A single-label run: 12 predictions (5 wrong, 2 of them invalid), 1 failed, 1 skipped."""
    return single_label_run(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def optimized_run_dir(tmp_path_factory) -> Path:
    """The same images after "optimization" (see OPTIMIZED_CHANGES), with the optimize extras:
    ``baseline_metrics.json`` (the fixture run's metrics) and ``prompt.json``."""
    root = tmp_path_factory.mktemp("runs_opt")
    baseline = single_label_run(root, "shapes-baseline")
    path = single_label_run(root, "shapes-optimized", changes=OPTIMIZED_CHANGES)
    run = RunDir(path)
    run.write_json("baseline_metrics.json", json.loads((baseline / METRICS).read_text(encoding="utf-8")))
    run.write_json("prompt.json", COMPILED_PROMPT)
    return path


@pytest.fixture(scope="session")
def multi_label_run_dir(tmp_path_factory) -> Path:
    return write_run(
        tmp_path_factory.mktemp("runs_ml"), "tags", _records(MULTI_LABEL_ROWS, lambda gold: "circle"),
        task={"output": "multi_label", "labels": MULTI_LABEL},
        metrics_args={"output_kind": "multi_label", "labels": MULTI_LABEL},
    )


@pytest.fixture(scope="session")
def multi_field_run_dir(tmp_path_factory) -> Path:
    return write_run(
        tmp_path_factory.mktemp("runs_mf"), "cars", _records(MULTI_FIELD_ROWS, lambda gold: "square"),
        task={"output": "multi_field", "fields": FIELDS},
        metrics_args={"output_kind": "multi_field", "fields": FIELDS},
    )
