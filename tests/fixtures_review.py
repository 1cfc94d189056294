"""Review fixtures: a finished run whose images exist as files, and Label Studio's JSON export shape.

``review_run`` is the fixtures_runs single-label run (12 rows: confident, doubtful, wrong and
invalid answers) with each row's image drawn at ``<root>/data/<id>.png``, where its
``image_ref`` points. ``label_studio_export`` stands in for Label Studio's Export > JSON where no
server runs: it builds the shape Label Studio 1.23.2 returned for the same calls in
tests/test_review_label_studio.py (tasks keep the ``data`` and ``meta`` they were imported with;
``predictions`` become ids; each annotation carries ``result``, ``was_cancelled``,
``ground_truth``, ``completed_by`` and timestamps).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from fixtures_runs import SINGLE_LABEL_ROWS, single_label_run
from vlmopt.review.label_studio import answer_result
from vlmopt.testing.images import draw_shape

GOLD = {item_id: gold for item_id, gold, *_ in SINGLE_LABEL_ROWS}
PREDICTED = {item_id: pred for item_id, _, pred, *_ in SINGLE_LABEL_ROWS}
CONFIDENCE = {item_id: conf for item_id, *_, conf in SINGLE_LABEL_ROWS}


def draw_images(folder: Path, shapes: dict[str, str], size: int = 48) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (item_id, shape) in enumerate(sorted(shapes.items())):
        draw_shape(shape, size=size, rng=random.Random(i)).save(folder / f"{item_id}.png")


@pytest.fixture(scope="session")
def review_run(tmp_path_factory) -> tuple[Path, Path]:
    """``(root, run)``: the single-label fixture run, its images under ``root/data/`` (image_ref data/<id>.png)."""
    root = tmp_path_factory.mktemp("review")
    draw_images(root / "data", GOLD)
    return root, single_label_run(root / "runs")


def label_studio_export(
    tasks: list[dict[str, Any]],
    answers: dict[str, dict[str, str] | None],
    *,
    cancelled: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """Label Studio's JSON export after a person answered: ``answers`` item id -> field -> value.

    An item in ``cancelled`` was skipped (an annotation with ``was_cancelled``); an item without
    an answer was never annotated.
    """
    exported = []
    for number, task in enumerate(tasks, start=1):
        item_id = task["data"]["item_id"]
        annotations = []
        if item_id in cancelled:
            annotations.append(_annotation(number, [], cancelled=True))
        elif answers.get(item_id) is not None:
            annotations.append(_annotation(number, answer_result(answers[item_id])))
        exported.append(
            {
                "id": number,
                "annotations": annotations,
                "drafts": [],
                "predictions": [number] if task["predictions"] else [],
                "data": task["data"],
                "meta": task.get("meta", {}),
                "created_at": "2026-12-02T09:18:36.785912Z",
                "updated_at": "2026-12-02T09:18:37.416985Z",
                "inner_id": number,
                "total_annotations": sum(not a["was_cancelled"] for a in annotations),
                "cancelled_annotations": sum(a["was_cancelled"] for a in annotations),
                "total_predictions": len(task["predictions"]),
                "project": 1,
            }
        )
    return exported


def _annotation(number: int, result: list[dict[str, Any]], *, cancelled: bool = False) -> dict[str, Any]:
    return {
        "id": number,
        "completed_by": 1,
        "result": result,
        "was_cancelled": cancelled,
        "ground_truth": False,
        "created_at": f"2026-12-02T09:20:{number:02d}.000000Z",
        "updated_at": f"2026-12-02T09:20:{number:02d}.000000Z",
        "lead_time": 3.5,
        "task": number,
        "project": 1,
    }
