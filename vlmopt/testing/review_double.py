"""Label Studio's JSON export as a person's review would leave it — a **test double for the person**, not for the tool.

The review loop needs someone to correct the model's pre-annotations; in tests and benches the
gold labels a synthetic pool already knows stand in for that person. The shape is the one Label
Studio 1.23 exports (checked against a real server in ``tests/test_review_label_studio.py``).

Example::

    exported = label_studio_export(tasks, {"a.png": {"label": "cat"}})   # -> vlmopt review import
"""

from __future__ import annotations

from typing import Any

from vlmopt.review.label_studio import answer_result


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
