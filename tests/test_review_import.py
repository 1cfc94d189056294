"""``vlmopt review import``: Label Studio's JSON export back into a manifest the dataset loader reads.

The export here is Label Studio's documented JSON shape (fixtures_review.label_studio_export,
the shape the real server returned in tests/test_review_label_studio.py); the person is a stand-in
who answers with the run's gold labels. The manifest is then read by the real dataset loader.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from fixtures_review import GOLD, PREDICTED, draw_images, label_studio_export
from fixtures_runs import SHAPES
from vlmopt.cli import app
from vlmopt.config import TaskConfig
from vlmopt.datasets import load_splits
from vlmopt.review import ReviewError, export_for_review, import_review, read_source
from vlmopt.review.manifest import changes_log_path

CANCELLED = ("img_09",)
NOT_ANNOTATED = "img_02"
UNKNOWN = "img_10"  # the person typed a label the task does not have
EXISTING = sorted(set(GOLD) - {"img_06", "img_11"})  # what the manifest held before the review


def invoke(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def reviewed(review_run, tmp_path):
    """(export file, tasks, manifest): the review tasks of the run, answered with the gold labels by a stand-in
    person, and a manifest that already holds EXISTING (img_07 mislabelled) beside the images."""
    _, run = review_run
    data = tmp_path / "data"
    draw_images(data, GOLD)  # the run's image_ref are data/<id>.png
    tasks_path = tmp_path / "tasks.json"
    export_for_review(read_source(run, image_root=tmp_path), tasks_path)
    tasks = json.loads(tasks_path.read_text())
    answers = {t["data"]["item_id"]: {"label": GOLD[t["data"]["item_id"]]} for t in tasks}
    answers[NOT_ANNOTATED] = None
    answers[UNKNOWN] = {"label": "hexagon"}
    export = tmp_path / "project-1-at-2026-12-02.json"
    export.write_text(json.dumps(label_studio_export(tasks, answers, cancelled=CANCELLED)))
    existing = [{"id": i, "image": f"{i}.png", "label": "circle" if i == "img_07" else GOLD[i]} for i in EXISTING]
    pd.DataFrame(existing).to_csv(data / "labels.csv", index=False)
    return export, tasks, data / "labels.csv"


def test_every_label_survives_and_what_the_person_changed_is_logged(reviewed):
    export, tasks, manifest = reviewed
    result = import_review(export, manifest)
    rows = pd.read_csv(manifest, dtype=str).to_dict("records")
    labelled = {t["data"]["item_id"] for t in tasks} - {NOT_ANNOTATED, UNKNOWN, *CANCELLED}
    by_id = {row["id"]: row for row in rows}
    assert len(rows) == len(by_id) == len(EXISTING) + len(labelled - set(EXISTING))
    assert sorted(result.merge.added) == ["img_06", "img_11"]
    assert all(by_id[i]["label"] == GOLD[i] for i in labelled)
    assert by_id["img_07"]["label"] == "square" and result.merge.updated == ["img_07"]
    assert by_id["img_11"]["image"] == "img_11.png"  # a new row's image, relative to the manifest
    assert by_id[NOT_ANNOTATED]["label"] == GOLD[NOT_ANNOTATED]  # kept as it was

    log = [json.loads(line) for line in changes_log_path(manifest).read_text().splitlines()]
    assert {entry["id"] for entry in log} == labelled
    changed = {entry["id"] for entry in log if entry["changed"]}
    assert changed == {i for i in labelled if PREDICTED[i] != GOLD[i]}  # invalid outputs had nothing to confirm
    assert all(
        entry["model_answer"] == ({"label": PREDICTED[entry["id"]]} if PREDICTED[entry["id"]] else None)
        for entry in log
    )
    summary = result.summary()
    assert f"1 skipped ({CANCELLED[0]})" in summary and f"1 not annotated ({NOT_ANNOTATED})" in summary
    assert f"1 unknown label ({UNKNOWN}: label 'hexagon' is not one of {SHAPES})" in summary


def test_importing_the_same_export_twice_changes_nothing(reviewed):
    export, _, manifest = reviewed
    import_review(export, manifest)
    first, log = manifest.read_bytes(), changes_log_path(manifest).read_text()
    again = import_review(export, manifest)
    assert manifest.read_bytes() == first and changes_log_path(manifest).read_text() == log
    assert again.merge.added == again.merge.updated == [] and again.merge.unchanged


def test_the_manifest_loads_as_a_dataset_source(reviewed):
    export, _, manifest = reviewed
    import_review(export, manifest)
    cfg = TaskConfig(
        dataset={
            "source": str(manifest),
            "id_column": "id",
            "image_column": "image",
            "label_column": "label",
            "max_image_side": 64,
        },
        task={"labels": SHAPES},
    )
    splits = load_splits(cfg)
    rows = pd.read_csv(manifest, dtype=str)
    assert sorted(ex.id for ex in splits.all) == sorted(rows["id"]) and not splits.skipped
    assert all(ex.label == GOLD[ex.id] for ex in splits.all if ex.id != NOT_ANNOTATED)


def test_a_new_manifest_in_each_format_holds_the_labels(reviewed, tmp_path):
    export, _, _ = reviewed
    for suffix in (".jsonl", ".parquet", ".csv"):
        path = tmp_path / "fresh" / f"labels{suffix}"
        result = import_review(export, path)
        assert result.merge.total == len(result.read.labels) == len(result.merge.added) > 0
        again = import_review(export, path)
        assert again.merge.total == result.merge.total and again.merge.unchanged == result.merge.added


def test_the_latest_annotation_and_the_ground_truth_win(reviewed):
    export, _, manifest = reviewed
    tasks = json.loads(export.read_text())
    task = next(t for t in tasks if t["data"]["item_id"] == "img_11")
    older = {
        **task["annotations"][0],
        "id": 90,
        "updated_at": "2026-12-01T00:00:00Z",
        "result": [{**task["annotations"][0]["result"][0], "value": {"choices": ["square"]}}],
    }
    task["annotations"].insert(0, older)
    duplicate = json.loads(json.dumps(task))  # the same item imported twice into the project, labelled later
    duplicate["id"] = 99
    duplicate["annotations"] = [
        {
            **task["annotations"][1],
            "id": 98,
            "updated_at": "2026-12-03T00:00:00Z",
            "result": [
                {**task["annotations"][1]["result"][0], "value": {"choices": ["square"]}},
            ],
        }
    ]
    export.write_text(json.dumps([*tasks, duplicate]))
    result = import_review(export, manifest)
    assert pd.read_csv(manifest, dtype=str).set_index("id").loc["img_11", "label"] == "square"
    assert "1 duplicate task (img_11: Label Studio task 99; the latest kept)" in result.summary()

    duplicate["annotations"][0]["updated_at"] = "2026-11-01T00:00:00Z"  # now the first task's label is newer
    task["annotations"][0]["ground_truth"] = True  # and its older annotation is marked ground truth
    export.write_text(json.dumps([*tasks, duplicate]))
    import_review(export, manifest)
    assert pd.read_csv(manifest, dtype=str).set_index("id").loc["img_11", "label"] == "square"
    task["annotations"][0]["ground_truth"] = False
    export.write_text(json.dumps([*tasks, duplicate]))
    import_review(export, manifest)
    assert pd.read_csv(manifest, dtype=str).set_index("id").loc["img_11", "label"] == GOLD["img_11"]


def test_the_cli_imports_and_a_config_sets_the_class_set(reviewed, tmp_path):
    export, _, manifest = reviewed
    config = tmp_path / "task.yaml"
    config.write_text("dataset: {source: data/labels.csv}\ntask: {labels: [circle, square, triangle, hexagon]}\n")
    done = invoke("review", "import", export, "--into", manifest, "--config", config)
    assert done.exit_code == 0, done.output
    assert "imported" in done.output and "unknown label" not in done.output  # hexagon is in this config's set
    assert pd.read_csv(manifest, dtype=str).set_index("id").loc[UNKNOWN, "label"] == "hexagon"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"id": 1, "data": {}}', "is not a list of tasks"),
        (
            '[{"id": 7, "data": {"image": "x.png"}, "annotations": []}]',
            "task 1 (Label Studio id 7) has no data.item_id",
        ),
        (
            '[{"id": 7, "data": {"item_id": "a"}, "meta": {"vlmopt": {"controls": {"label": ["x", "y"]}}}, '
            '"annotations": [{"id": 3, "was_cancelled": false}]}]',
            "annotation 3 has no 'result' list",
        ),
        ('[{"id": 7, "data": {"item_id": "a"}, "annotations": []}]', "no task records the class set"),
    ],
)
def test_a_bad_export_is_one_line_naming_the_problem(tmp_path, content, message):
    export = tmp_path / "export.json"
    export.write_text(content)
    done = invoke("review", "import", export, "--into", tmp_path / "labels.csv")
    assert done.exit_code == 2 and message in done.output, done.output
    assert len(done.output.strip().splitlines()) == 1 and "Traceback" not in done.output
    assert not (tmp_path / "labels.csv").exists()


def test_a_manifest_that_is_not_a_review_manifest_is_refused(reviewed, tmp_path):
    export, _, _ = reviewed
    other = tmp_path / "other.csv"
    other.write_text("path,class\na.png,cat\n")
    with pytest.raises(ReviewError, match=r"has no column id, image, label \(its columns: \['class', 'path'\]\)"):
        import_review(export, other)
    twice = tmp_path / "twice.csv"
    twice.write_text("id,image,label\na,a.png,circle\na,b.png,square\n")
    with pytest.raises(ReviewError, match="id 'a' appears twice"):
        import_review(export, twice)


def test_multi_field_labels_round_trip_into_one_column_per_field(multi_field_run_dir, tmp_path):
    from fixtures_runs import FIELDS, MULTI_FIELD_ROWS

    draw_images(tmp_path / "data", {"mf_0": "circle", "mf_1": "square", "mf_2": "triangle"})
    export_for_review(read_source(multi_field_run_dir, image_root=tmp_path), tmp_path / "tasks.json")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    gold = {item_id: g for item_id, g, *_ in MULTI_FIELD_ROWS}
    export = tmp_path / "export.json"
    export.write_text(
        json.dumps(label_studio_export(tasks, {t["data"]["item_id"]: gold[t["data"]["item_id"]] for t in tasks}))
    )
    result = import_review(export, tmp_path / "data" / "cars.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "data" / "cars.jsonl").read_text().splitlines()]
    assert {r["id"]: {f: r[f] for f in FIELDS} for r in rows} == gold
    assert set(result.merge.changed) == {"mf_1", "mf_2"}  # mf_1's year was wrong, mf_2 had no valid answer
