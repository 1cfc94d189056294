"""The Label Studio side of a review: the labeling config, the import tasks with pre-annotations, image URLs.

Both are Label Studio's documented JSON / XML, built and checked with label-studio-sdk's
``LabelInterface`` (it parses the config, refuses labels outside it and validates each
pre-annotation against it):

* the **labeling config**: one ``Image`` named ``image`` and one ``Choices`` per field (a
  single-label task: one, named ``label``), single choice, required;
* a **task**: ``data`` (the image URL, vlmopt's ``item_id``, the image's path, the model's answer
  and confidence, why it was selected), ``meta.vlmopt`` (the fields and classes, so the export
  can be read back without the config) and ``predictions``: the model's answer as a
  pre-annotation, ``score`` its confidence (an invalid output has none: nothing to pre-fill).

**Images.** Label Studio shows what ``data.image``'s URL points at; two ways here:

* *inline* (default): a ``data:image/jpeg;base64`` URI of the image, decoded as vlmopt decodes
  it (EXIF applied, RGB) and downscaled to :data:`INLINE_MAX_SIDE` — works with any Label
  Studio and needs no server setting; the import file grows by the images' size;
* *local files* (``local_files_root``): ``/data/local-files/?d=<path under the root>``. Label
  Studio serves such a file only when started with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true``
  and ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>`` *and* the project has a Local files
  storage whose absolute path holds the file (a folder under the root; it refuses the root
  itself). :func:`storage_folders` names that folder.

Example::

    config = labeling_config({"label": ["cat", "dog"]})
    task = build_task(selected, image_url=inline_image(path), controls=..., model_version="run-1")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from vlmopt.review.errors import ReviewError, SdkMissing
from vlmopt.review.selection import Selected

IMAGE = "image"
"""The Image tag's name and its ``data`` key."""
ITEM_ID = "item_id"
"""The ``data`` key holding vlmopt's id (Label Studio's own task ``id`` is a number it assigns)."""
INLINE_MAX_SIDE = 1024
"""Longer side of an inline image: enough to judge a label, small enough for a big import."""
LOCAL_FILES_PREFIX = "/data/local-files/?d="


def label_interface(config: str):
    """The SDK's parsed, validated view of a labeling config (a bad config is its own error)."""
    try:
        from label_studio_sdk.label_interface import LabelInterface
    except ImportError:
        raise SdkMissing() from None
    interface = LabelInterface(config)
    interface.validate()
    return interface


def labeling_config(controls: dict[str, list[str]]) -> str:
    """The labeling config XML: the image, then one required single-choice ``Choices`` per field."""
    try:
        from label_studio_sdk.label_interface import LabelInterface
        from label_studio_sdk.label_interface.create import choices
    except ImportError:
        raise SdkMissing() from None
    tags: dict[str, Any] = {IMAGE: "Image"}
    for name, values in controls.items():
        tags[name] = choices(values, toName=IMAGE, choice="single", required="true", showInline="true")
    config = LabelInterface.create(tags)
    label_interface(config)
    return config


def answer_result(answer: dict[str, str]) -> list[dict[str, Any]]:
    """Label Studio's ``result`` for an answer: one ``choices`` region per field."""
    return [
        {"from_name": name, "to_name": IMAGE, "type": "choices", "value": {"choices": [value]}}
        for name, value in answer.items()
    ]


def build_task(
    selected: Selected, *, image_url: str, controls: dict[str, list[str]], model_version: str, interface=None
) -> dict[str, Any]:
    """One import task; its pre-annotation is validated against the labeling config (``interface``)."""
    c = selected.candidate
    task: dict[str, Any] = {
        "data": {
            IMAGE: image_url,
            ITEM_ID: c.id,
            "image_path": str(c.image) if c.image else None,
            "model_answer": c.answer,
            "model_confidence": c.confidence,
            "review_reasons": ",".join(selected.reasons),
        },
        "meta": {"vlmopt": {"controls": controls, "model_version": model_version}},
        "predictions": [],
    }
    if c.answer is not None:
        prediction: dict[str, Any] = {"model_version": model_version, "result": answer_result(c.answer)}
        if c.confidence is not None:
            prediction["score"] = c.confidence
        if interface is not None:
            errors = interface.validate_prediction(prediction, return_errors=True)
            if errors:
                raise ReviewError(
                    f"row {c.id!r}: the model's answer {c.answer} does not fit the labeling config: "
                    f"{errors[0]} (was the row made by another task's artifact?)"
                )
        task["predictions"].append(prediction)
    return task


def inline_image(path: Path) -> str:
    """A JPEG data URI of the image, decoded as vlmopt decodes it; a bad file raises ``BadImage``."""
    from vlmopt.datasets.images import load_image, to_dspy_image

    return to_dspy_image(load_image(path, max_side=INLINE_MAX_SIDE)).url


def local_files_url(path: Path, root: Path) -> str:
    """``/data/local-files/?d=...``: the image's path under ``root``, quoted as Label Studio quotes it."""
    root = root.resolve()
    try:
        relative = path.resolve().relative_to(root)
    except ValueError:
        raise ReviewError(
            f"image {path} is not under --local-files-root {root}; give a root that holds "
            "every image (Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)"
        ) from None
    if len(relative.parts) < 2:
        raise ReviewError(
            f"image {path} lies directly in --local-files-root {root}: Label Studio serves files "
            "only from a storage folder under the root, not the root itself; give its parent folder"
        )
    return LOCAL_FILES_PREFIX + quote(relative.as_posix())


def storage_folders(images: list[Path], root: Path) -> list[Path]:
    """The Local files storage path(s) to add to the project: the deepest folder holding every image,
    or — when only the root holds them all — one per top-level folder under the root."""
    root = root.resolve()
    common = Path(os.path.commonpath([str(p.resolve().parent) for p in images]))
    if common != root:
        return [common]
    return sorted({root / p.resolve().relative_to(root).parts[0] for p in images})
