"""Read Label Studio's JSON export of a review project back into the labels a person gave.

The export (Export > JSON, or ``GET /api/projects/<id>/export?exportType=JSON``) is a list of
tasks, each with the ``data`` and ``meta`` this package wrote and the ``annotations`` people
made: ``{"result": [{"from_name": "label", "type": "choices", "value": {"choices": ["dog"]}}],
"was_cancelled": false, "ground_truth": false, "updated_at": ...}``.

Per task, the annotation taken is the ground-truth one if any, else the latest submitted one;
a skipped task (its annotations all ``was_cancelled``), a task nobody annotated, an annotation
missing a field, and a label outside the class set are left out, counted and named — never a
crash. What is not a review export at all (not a JSON list, a task without ``data.item_id``, an
annotation without ``result``) is one ``ReviewError`` naming the task and the fix.

Example::

    reviewed = read_export(Path("project-1-at-2026-01-01.json"))
    reviewed.labels[0].answer, reviewed.labels[0].model_answer    # {"label": "dog"}, {"label": "cat"}
    reviewed.skipped.describe()                                    # "1 skipped (img_3)"
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmopt.review.errors import ReviewError
from vlmopt.review.label_studio import ITEM_ID
from vlmopt.review.skips import Skips


@dataclass(frozen=True)
class Reviewed:
    """One label a person gave: the answer (field -> value) and what the model had pre-annotated."""

    item_id: str
    image_path: str | None
    answer: dict[str, str]
    model_answer: dict[str, str] | None
    model_confidence: float | None
    task_id: int | None  # Label Studio's task id
    annotation_id: int | None
    annotator: int | None

    @property
    def changed_fields(self) -> list[str]:
        """The fields the person set to something else than the model's pre-annotation (all, if it had none)."""
        model = self.model_answer or {}
        return [name for name, value in self.answer.items() if model.get(name) != value]


@dataclass
class ReadExport:
    controls: dict[str, list[str]]  # field -> classes the labels were checked against
    labels: list[Reviewed] = field(default_factory=list)
    skipped: Skips = field(default_factory=Skips)
    n_tasks: int = 0


def load_export(path: Path) -> list[dict[str, Any]]:
    """The export's task list, or a ``ReviewError`` saying what the file is instead."""
    if not path.is_file():
        raise ReviewError(f"Label Studio export {path} does not exist")
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReviewError(f"{path} is not JSON ({exc}): export the project from Label Studio as JSON") from None
    if not isinstance(tasks, list) or not all(isinstance(task, dict) for task in tasks):
        raise ReviewError(
            f"{path} is not a list of tasks: export the project from Label Studio as JSON "
            "(not JSON-MIN, CSV or a single task)"
        )
    return tasks


def recorded_controls(tasks: list[dict[str, Any]]) -> dict[str, list[str]] | None:
    """The fields and classes ``vlmopt review export`` recorded in the tasks' ``meta`` (None if none did)."""
    for task in tasks:
        controls = ((task.get("meta") or {}).get("vlmopt") or {}).get("controls")
        if controls:
            return {str(name): [str(v) for v in values] for name, values in controls.items()}
    return None


def read_export(path: Path, *, controls: dict[str, list[str]] | None = None) -> ReadExport:
    """The labels of every annotated task; ``controls`` (field -> classes) default to the tasks' ``meta``."""
    tasks = load_export(path)
    for number, task in enumerate(tasks, start=1):
        if not isinstance(task.get("data"), dict) or not task["data"].get(ITEM_ID):
            raise ReviewError(
                f"{_where(path, number, task)} has no data.{ITEM_ID}: this export is not of tasks "
                "`vlmopt review export` wrote; export the project that holds them"
            )
    controls = controls or recorded_controls(tasks)
    if not controls:
        raise ReviewError(
            f"{path}: no task records the class set (meta.vlmopt.controls); give --config, the task "
            "config whose labels the review used"
        )
    found: dict[str, tuple[str, Reviewed]] = {}  # item id -> (annotation time, label): the latest wins
    read = ReadExport(controls, n_tasks=len(tasks))
    for number, task in enumerate(tasks, start=1):
        data, where = task["data"], _where(path, number, task)
        item_id = str(data[ITEM_ID])
        annotation = _chosen_annotation(task.get("annotations"), where)
        if annotation is None:
            cancelled = any(a.get("was_cancelled") for a in task.get("annotations") or [])
            read.skipped.add("skipped" if cancelled else "not_annotated", item_id)
            continue
        answer, problem = _answer(annotation["result"], controls)
        if problem:
            read.skipped.add(problem[0], f"{item_id}: {problem[1]}")
            continue
        label = Reviewed(
            item_id=item_id,
            image_path=data.get("image_path"),
            answer=answer,
            model_answer=data.get("model_answer"),
            model_confidence=data.get("model_confidence"),
            task_id=task.get("id"),
            annotation_id=annotation.get("id"),
            annotator=annotation.get("completed_by"),
        )
        when = str(annotation.get("updated_at") or annotation.get("created_at") or "")
        if item_id in found:
            read.skipped.add("duplicate_task", f"{item_id}: Label Studio task {task.get('id')}; the latest kept")
            if when < found[item_id][0]:
                continue
        found[item_id] = (when, label)
    read.labels = [label for _, label in found.values()]
    return read


def _where(path: Path, number: int, task: dict[str, Any]) -> str:
    return f"{path}: task {number} (Label Studio id {task.get('id')})"


def _chosen_annotation(annotations: Any, where: str) -> dict[str, Any] | None:
    """The ground-truth annotation, else the latest submitted one; None if all were skipped or there are none."""
    if annotations is None:
        return None
    if not isinstance(annotations, list) or not all(isinstance(a, dict) for a in annotations):
        raise ReviewError(f"{where}: 'annotations' is not a list of annotations; export the project as JSON")
    submitted = [a for a in annotations if not a.get("was_cancelled")]
    for annotation in submitted:
        if not isinstance(annotation.get("result"), list):
            raise ReviewError(
                f"{where}: annotation {annotation.get('id')} has no 'result' list; export the project as JSON"
            )
    if not submitted:
        return None
    return max(submitted, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at") or ""), a.get("id") or 0))


def _answer(result: list[Any], controls: dict[str, list[str]]) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The annotation's field -> value, or the reason it cannot be used: ``(reason, detail)``."""
    answer: dict[str, str] = {}
    for region in result:
        if not isinstance(region, dict) or region.get("type") != "choices" or region.get("from_name") not in controls:
            continue
        chosen = (region.get("value") or {}).get("choices")
        if not isinstance(chosen, list) or len(chosen) != 1:
            return answer, ("not_one_choice", f"{region.get('from_name')} = {chosen!r}")
        answer[region["from_name"]] = str(chosen[0])
    missing = [name for name in controls if name not in answer]
    if missing:
        return answer, ("no_choice", f"nothing chosen for {', '.join(missing)}")
    for name, value in answer.items():
        if value not in controls[name]:
            return answer, ("unknown_label", f"{name} {value!r} is not one of {controls[name]}")
    return answer, None
