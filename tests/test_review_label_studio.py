"""The review round trip through a real Label Studio server: export -> project -> person -> export -> import.

The server is Label Studio from .venv-labelstudio on loopback (fixtures_labelstudio); the project
is created, the tasks imported and the export downloaded through label-studio-sdk's client. The
person is a stand-in: ``annotate_as_person`` submits, through the API, the answers a person would
click (the run's gold labels), skips one task and leaves one untouched.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError
from label_studio_sdk.label_interface import LabelInterface
from typer.testing import CliRunner

from fixtures_review import CONFIDENCE, GOLD, PREDICTED
from fixtures_runs import SHAPES
from vlmopt.cli import app
from vlmopt.review.export import labeling_config_path
from vlmopt.review.label_studio import answer_result
from vlmopt.review.manifest import changes_log_path

pytestmark = pytest.mark.slow

SKIPPED, UNTOUCHED = "img_09", "img_02"


def invoke(*args) -> object:
    done = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    return done


def annotate_as_person(client: LabelStudio, project_id: int) -> set[str]:
    """Stand-in for the person: answer each task with its gold label, skip SKIPPED, leave UNTOUCHED alone."""
    answered = set()
    for task in client.tasks.list(project=project_id):
        item_id = task.data["item_id"]
        if item_id == SKIPPED:
            client.annotations.create(task.id, result=[], was_cancelled=True)
        elif item_id != UNTOUCHED:
            client.annotations.create(task.id, result=answer_result({"label": GOLD[item_id]}))
            answered.add(item_id)
    return answered


def local_file(server, url: str) -> bytes | int:
    """What the server answers for a task's local-files URL: the bytes, or the HTTP status of a refusal."""
    request = urllib.request.Request(server.url + url, headers={"Authorization": f"Token {server.token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.read()
    except urllib.error.HTTPError as refused:
        return refused.code


def project_round_trip(client: LabelStudio, tasks_path: Path, tmp_path: Path, *, storage: Path | None = None):
    """Create a project with the exported labeling config, import the tasks, label them, download the JSON export."""
    config = labeling_config_path(tasks_path).read_text()
    project = client.projects.create(title=f"vlmopt review {tmp_path.name}", label_config=config)
    assert LabelInterface(client.projects.get(project.id).label_config).get_control("label").labels == SHAPES
    if storage is not None:
        client.import_storage.local.create(project=project.id, path=str(storage), title="review images")
    tasks = json.loads(tasks_path.read_text())
    imported = client.projects.import_tasks(project.id, request=tasks, return_task_ids=True)
    assert imported.task_count == len(tasks)
    assert imported.prediction_count == sum(len(t["predictions"]) for t in tasks)
    stored = {t.data["item_id"]: t for t in client.tasks.list(project=project.id)}
    assert set(stored) == {t["data"]["item_id"] for t in tasks}
    for item_id, task in stored.items():
        predictions = client.predictions.list(task=task.id)
        if PREDICTED[item_id] is None:
            assert predictions == []
            continue
        (prediction,) = predictions
        assert prediction.result[0]["value"]["choices"] == [PREDICTED[item_id]]
        assert prediction.score == pytest.approx(CONFIDENCE[item_id])
    answered = annotate_as_person(client, project.id)
    export = tmp_path / "export.json"
    export.write_bytes(
        b"".join(client.projects.exports.download_sync(project.id, download_all_tasks=True, export_type="JSON"))
    )
    return project, stored, answered, export


def test_round_trip_with_inline_images_keeps_every_id_and_label(label_studio, review_run, tmp_path):
    root, run = review_run
    tasks_path = tmp_path / "tasks.json"
    invoke("review", "export", run, "-o", tasks_path, "--image-root", root)
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    _, stored, answered, export = project_round_trip(client, tasks_path, tmp_path)
    sent = {t["data"]["item_id"]: t["data"]["image"] for t in json.loads(tasks_path.read_text())}
    assert all(stored[i].data["image"] == sent[i] and sent[i].startswith("data:image/jpeg;base64,") for i in sent)

    manifest = tmp_path / "labels.csv"
    done = invoke("review", "import", export, "--into", manifest)
    rows = pd.read_csv(manifest, dtype=str)
    assert dict(zip(rows["id"], rows["label"], strict=True)) == {i: GOLD[i] for i in answered}
    assert all((manifest.parent / Path(cell)).is_file() or Path(cell).is_file() for cell in rows["image"])
    log = [json.loads(line) for line in changes_log_path(manifest).read_text().splitlines()]
    assert {e["id"] for e in log if e["changed"]} == {i for i in answered if PREDICTED[i] != GOLD[i]}
    assert f"1 skipped ({SKIPPED})" in done.output and f"1 not annotated ({UNTOUCHED})" in done.output


def test_round_trip_with_local_files_serves_the_images(label_studio, review_run, tmp_path):
    root, run = review_run
    image_root = label_studio.document_root / tmp_path.name
    shutil.copytree(root / "data", image_root / "data")
    tasks_path = tmp_path / "tasks.json"
    done = invoke(
        "review",
        "export",
        run,
        "-o",
        tasks_path,
        "--image-root",
        image_root,
        "--local-files-root",
        label_studio.document_root,
    )
    storage = (image_root / "data").resolve()
    assert f"with path {storage}" in done.output
    first_url = json.loads(tasks_path.read_text())[0]["data"]["image"]
    assert local_file(label_studio, first_url) == 404  # served only from a storage of some project
    client = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    with pytest.raises(ApiError, match="cannot be the same as LOCAL_FILES_DOCUMENT_ROOT"):
        client.import_storage.local.create(
            project=client.projects.list().items[0].id, path=str(label_studio.document_root)
        )
    _, stored, answered, export = project_round_trip(client, tasks_path, tmp_path, storage=storage)
    for item_id, task in stored.items():
        assert local_file(label_studio, task.data["image"]) == (image_root / "data" / f"{item_id}.png").read_bytes()

    manifest = image_root / "data" / "labels.jsonl"
    invoke("review", "import", export, "--into", manifest)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert {r["id"]: (r["label"], r["image"]) for r in rows} == {i: (GOLD[i], f"{i}.png") for i in answered}
