"""``vlmopt review export``: which rows, in what order, and a Label Studio import the SDK accepts.

The run is the fixtures_runs single-label run with its images on disk (fixtures_review). The
labeling config and every pre-annotation are checked with label-studio-sdk's ``LabelInterface``,
the SDK's own parser and validator; the real server round trip is tests/test_review_label_studio.py.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
from pathlib import Path

import pytest
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image
from typer.testing import CliRunner

from fixtures_review import CONFIDENCE, GOLD, PREDICTED, draw_images
from fixtures_runs import INVALID_IDS, SHAPES, WRONG_IDS
from vlmopt.cli import app
from vlmopt.review import ReviewError, export_for_review, read_source, select_for_review
from vlmopt.review.export import labeling_config_path
from vlmopt.review.label_studio import LOCAL_FILES_PREFIX, local_files_url

MAX_CONFIDENCE = 0.8


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def expected_review_order(max_confidence: float = MAX_CONFIDENCE) -> list[str]:
    """From the row table: invalid (confidence 0), low-confidence or wrong rows; least confident first."""

    def confidence(item_id):
        return 0.0 if item_id in INVALID_IDS else CONFIDENCE[item_id]

    picked = [
        i
        for i in GOLD
        if i in INVALID_IDS or i in WRONG_IDS or (CONFIDENCE[i] is not None and CONFIDENCE[i] < max_confidence)
    ]
    known = sorted((i for i in picked if confidence(i) is not None), key=lambda i: (confidence(i), i))
    return known + sorted(i for i in picked if confidence(i) is None)


def test_rows_are_picked_for_every_reason_least_confident_first(review_run):
    root, run = review_run
    source = read_source(run, image_root=root)
    picked = select_for_review(source.candidates, max_confidence=MAX_CONFIDENCE)
    assert [p.candidate.id for p in picked] == expected_review_order()
    reasons = {p.candidate.id: p.reasons for p in picked}
    assert reasons["img_06"] == ("invalid", "disagree")
    assert reasons["img_09"] == ("low_confidence",)  # right but unsure
    assert reasons["img_11"] == ("low_confidence", "disagree")
    assert source.controls == {"label": SHAPES}


def test_selectors_limit_and_threshold_narrow_the_pick(review_run):
    root, run = review_run
    candidates = read_source(run, image_root=root).candidates
    disagree = select_for_review(candidates, selectors=("disagree",))
    assert {p.candidate.id for p in disagree} == WRONG_IDS
    assert [p.candidate.id for p in select_for_review(candidates, limit=3)] == expected_review_order()[:3]
    stricter = select_for_review(candidates, selectors=("low_confidence",), max_confidence=0.5)
    assert [p.candidate.id for p in stricter] == ["img_11", "img_07"]
    with pytest.raises(ReviewError, match="--select confident: not a reason"):
        select_for_review(candidates, selectors=("confident",))


def test_export_writes_tasks_and_a_config_the_sdk_validates(review_run, tmp_path):
    root, run = review_run
    out = tmp_path / "tasks.json"
    result = export_for_review(read_source(run, image_root=root), out, max_confidence=MAX_CONFIDENCE)
    tasks = json.loads(out.read_text())
    interface = LabelInterface(labeling_config_path(out).read_text())
    interface.validate()
    assert interface.get_control("label").labels == SHAPES
    assert [t["data"]["item_id"] for t in tasks] == expected_review_order() and result.n_tasks == len(tasks)
    for task in tasks:
        item_id = task["data"]["item_id"]
        if item_id in INVALID_IDS:
            assert task["predictions"] == [] and task["data"]["model_answer"] is None
            continue
        (prediction,) = task["predictions"]
        assert interface.validate_prediction(prediction) is True
        assert prediction["result"][0]["value"]["choices"] == [PREDICTED[item_id]]
        assert prediction["score"] == CONFIDENCE[item_id]
        assert prediction["model_version"] == run.name
        header, payload = task["data"]["image"].split(",", 1)
        assert header == "data:image/jpeg;base64"
        picture = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert picture.size == Image.open(root / "data" / f"{item_id}.png").size
        assert task["meta"]["vlmopt"]["controls"] == {"label": SHAPES}
    assert "2 invalid" in result.summary() and "left out" not in result.summary()


def test_a_prediction_outside_the_class_set_is_refused_by_the_sdk_check(review_run, tmp_path):
    root, run = review_run
    source = read_source(run, image_root=root)
    narrowed = dataclasses.replace(source, controls={"label": ["circle", "square"]})  # no triangle
    with pytest.raises(ReviewError, match=r"row 'img_07'.*\{'label': 'triangle'\} does not fit the labeling config"):
        export_for_review(narrowed, tmp_path / "tasks.json", selectors=("disagree",))


def test_rows_without_an_image_file_are_left_out_and_named(review_run, tmp_path):
    root, run = review_run
    shutil.copytree(root / "data", tmp_path / "data")
    (tmp_path / "data" / "img_07.png").unlink()
    (tmp_path / "data" / "img_11.png").write_bytes(b"not a png")
    result = export_for_review(read_source(run, image_root=tmp_path), tmp_path / "tasks.json")
    ids = [t["data"]["item_id"] for t in json.loads((tmp_path / "tasks.json").read_text())]
    assert ids == [i for i in expected_review_order() if i not in ("img_07", "img_11")]
    summary = result.summary()
    assert "1 without an image file (img_07)" in summary and "1 unreadable image (img_11: not_an_image)" in summary


def test_local_files_urls_point_under_the_document_root(review_run, tmp_path):
    root, run = review_run
    result = export_for_review(read_source(run, image_root=root), tmp_path / "tasks.json", local_files_root=root)
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert {t["data"]["image"] for t in tasks} == {f"{LOCAL_FILES_PREFIX}data/{i}.png" for i in expected_review_order()}
    assert result.storage_folders == [(root / "data").resolve()]
    assert str((root / "data").resolve()) in result.local_files_hint()
    with pytest.raises(ReviewError, match="lies directly in --local-files-root"):
        local_files_url(root / "data" / "img_00.png", root / "data")
    with pytest.raises(ReviewError, match="is not under --local-files-root"):
        local_files_url(root / "data" / "img_00.png", tmp_path)


def test_a_predict_output_reads_the_same_in_every_format(tmp_path):
    from vlmopt.artifacts import save_artifact
    from vlmopt.config import TaskConfig
    from vlmopt.predict.tables import write_rows
    from vlmopt.programs import create_program

    draw_images(tmp_path / "inbox", GOLD)
    rows = [
        {
            "id": f"inbox/{i}.png",
            "label": PREDICTED[i] or "",
            "confidence": CONFIDENCE[i],
            "valid": PREDICTED[i] is not None,
            "raw": "",
        }
        for i in GOLD
    ]
    cfg = TaskConfig(dataset={"source": "-"}, task={"labels": SHAPES})
    artifact = save_artifact(
        create_program(cfg.task, SHAPES), cfg, SHAPES, tmp_path / "artifact.json", metrics={}, provenance={}
    )
    read = {}
    for suffix in (".jsonl", ".csv", ".parquet"):
        path = write_rows(rows, tmp_path / f"labels{suffix}")
        read[suffix] = read_source(path, artifact=artifact, image_root=tmp_path).candidates
    assert read[".jsonl"] == read[".csv"] == read[".parquet"]
    by_id = {c.id: c for c in read[".csv"]}
    assert by_id["inbox/img_06.png"].answer is None and by_id["inbox/img_02.png"].answer == {"label": "square"}
    assert all(c.image == (tmp_path / c.id).resolve() and c.gold is None for c in read[".csv"])

    rows[0] = {**rows[0], "abstained": True}  # the abstention threshold declined a confident answer
    abstained = read_source(write_rows(rows, tmp_path / "abstained.jsonl"), artifact=artifact, image_root=tmp_path)
    picked = {p.candidate.id: p.reasons for p in select_for_review(abstained.candidates)}
    assert picked["inbox/img_00.png"] == ("abstained",)
    assert abstained.model_version.startswith("artifact@")


def test_the_cli_exports_and_explains_what_it_cannot_read(review_run, tmp_path):
    root, run = review_run
    out = tmp_path / "review" / "tasks.json"
    done = invoke(
        "review", "export", run, "-o", out, "--image-root", root, "--limit", "4", "--select", "invalid,disagree"
    )
    assert done.exit_code == 0, done.output
    assert "wrote 4 tasks" in done.output and labeling_config_path(out).is_file()
    assert [t["data"]["item_id"] for t in json.loads(out.read_text())] == ["img_06", "img_10", "img_11", "img_07"]
    for args, message in (
        ((tmp_path / "nowhere",), "does not exist: give a run directory"),
        ((run, "--select", "shiny"), "--select shiny: not a reason to review"),
        ((tmp_path / "labels.jsonl",), "does not exist"),
    ):
        failed = invoke("review", "export", *args, "-o", tmp_path / "x.json")
        assert failed.exit_code == 2 and message in failed.output, failed.output
        assert "Traceback" not in failed.output
    (tmp_path / "labels.jsonl").write_text('{"id": "a.png", "label": "circle"}\n')
    failed = invoke("review", "export", tmp_path / "labels.jsonl", "-o", tmp_path / "x.json")
    assert failed.exit_code == 2 and "is a predict output: give --artifact" in failed.output


def test_multi_field_tasks_get_one_choices_per_field(multi_field_run_dir, tmp_path):
    from fixtures_runs import FIELDS

    draw_images(tmp_path / "data", {"mf_0": "circle", "mf_1": "square", "mf_2": "triangle"})
    result = export_for_review(read_source(multi_field_run_dir, image_root=tmp_path), tmp_path / "tasks.json")
    interface = LabelInterface(labeling_config_path(tmp_path / "tasks.json").read_text())
    assert {name: interface.get_control(name).labels for name in FIELDS} == FIELDS
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert result.n_tasks == 3
    for task in tasks:
        for prediction in task["predictions"]:
            assert interface.validate_prediction(prediction) is True
            assert {r["from_name"] for r in prediction["result"]} == set(FIELDS)


def test_multi_label_is_refused_in_one_line(multi_label_run_dir, tmp_path):
    done = invoke("review", "export", multi_label_run_dir, "-o", tmp_path / "x.json")
    assert done.exit_code == 2 and "single-label and multi-field tasks only" in done.output
    assert len(done.output.strip().splitlines()) == 1


def test_a_large_image_is_inlined_at_most_1024_px_and_upright(tmp_path):
    from vlmopt.review.label_studio import INLINE_MAX_SIDE, inline_image

    path = tmp_path / "wide.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: stored sideways, shown rotated by 90 degrees
    Image.new("RGB", (3000, 1200), "red").save(path, exif=exif)
    header, payload = inline_image(path).split(",", 1)
    assert header == "data:image/jpeg;base64"
    assert Image.open(io.BytesIO(base64.b64decode(payload))).size == (
        round(INLINE_MAX_SIDE * 1200 / 3000),
        INLINE_MAX_SIDE,
    )


def test_image_paths_resolve_against_the_image_root(review_run):
    root, run = review_run
    assert all(c.image is None for c in read_source(run, image_root=Path("/nonexistent")).candidates)


def test_an_interrupted_run_without_metrics_is_read_from_its_config(review_run, tmp_path):
    root, run = review_run
    interrupted = tmp_path / run.name
    shutil.copytree(run, interrupted)
    (interrupted / "metrics.json").unlink()
    source = read_source(interrupted, image_root=root)
    assert source.controls == {"label": SHAPES}
    assert source.candidates == read_source(run, image_root=root).candidates
