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

import pytest

from fixtures_runs import SINGLE_LABEL_ROWS, single_label_run
from vlmopt.testing.images import draw_shape
from vlmopt.testing.review_double import label_studio_export  # noqa: F401 - the tests import it from here

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


