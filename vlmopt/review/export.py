"""``vlmopt review export``: the rows worth a person's time, as a Label Studio import and its labeling config.

Two files are written: ``OUTPUT`` (a JSON list of tasks, each with the image and the model's
pre-annotation; see :mod:`vlmopt.review.label_studio`) and ``<OUTPUT stem>.labeling.xml`` (paste
it into the project's Labeling Interface, or pass it as ``label_config`` when creating the
project through the SDK). A row whose image is no file (a hub dataset's rows keep only a
thumbnail) or cannot be read is left out and named; the rest go in review order until ``limit``.

Example::

    source = read_source("runs/cats-20260101-120000")
    result = export_for_review(source, Path("review/tasks.json"), limit=50)
    print(result.summary())
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from vlmopt.review.label_studio import (
    build_task,
    inline_image,
    label_interface,
    labeling_config,
    local_files_url,
    storage_folders,
)
from vlmopt.review.selection import DEFAULT_MAX_CONFIDENCE, SELECTORS, select_for_review
from vlmopt.review.skips import Skips
from vlmopt.review.source import ReviewSource


@dataclass
class ExportResult:
    """What an export wrote and left out, for the summary line."""

    tasks_path: Path
    config_path: Path
    source: ReviewSource
    n_tasks: int = 0
    reasons: Counter = field(default_factory=Counter)
    skipped: Skips = field(default_factory=Skips)
    storage_folders: list[Path] = field(default_factory=list)  # local files: the storages the project needs

    def summary(self) -> str:
        rows = len(self.source.candidates)
        why = ", ".join(f"{n} {reason}" for reason, n in self.reasons.most_common())
        line = (
            f"wrote {self.n_tasks} tasks to {self.tasks_path} (labeling config {self.config_path}) from "
            f"{rows} rows of {self.source.path}" + (f": {why}" if why else "")
        )
        if self.skipped.count():
            line += f"; left out {self.skipped.describe()}"
        if rows and all(c.confidence is None for c in self.source.candidates):
            line += "; no row has a measured confidence, so low_confidence picked none (use a backend with label "
            line += "probabilities)"
        return line

    def local_files_hint(self) -> str | None:
        """How to make Label Studio serve the images, when the tasks point at local files."""
        if not self.storage_folders:
            return None
        folders = ", ".join(str(p) for p in self.storage_folders)
        return (
            "Label Studio serves these images when started with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
            "and LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<--local-files-root>, and the project has a Local "
            f"files storage (Settings > Cloud Storage > Add Source Storage > Local files) with path {folders}"
        )


def labeling_config_path(tasks_path: Path) -> Path:
    """Where the labeling config goes beside the tasks: ``tasks.json`` -> ``tasks.labeling.xml``."""
    return tasks_path.with_name(f"{tasks_path.stem}.labeling.xml")


def export_for_review(
    source: ReviewSource,
    output: Path,
    *,
    selectors: tuple[str, ...] = SELECTORS,
    max_confidence: float = DEFAULT_MAX_CONFIDENCE,
    limit: int | None = None,
    local_files_root: Path | None = None,
    console: Console | None = None,
) -> ExportResult:
    """Select, order and write the review tasks and the labeling config (see the module docstring)."""
    from vlmopt.datasets.images import BadImage

    config = labeling_config(source.controls)
    interface = label_interface(config)
    result = ExportResult(output, labeling_config_path(output), source)
    picked = select_for_review(source.candidates, selectors=selectors, max_confidence=max_confidence)
    tasks, images = [], []
    for selected in _progress(picked, console):
        if limit is not None and len(tasks) >= limit:
            break
        candidate = selected.candidate
        if candidate.image is None:
            result.skipped.add("without_an_image_file", candidate.id)
            continue
        if local_files_root is not None:
            url = local_files_url(candidate.image, local_files_root)
        else:
            try:
                url = inline_image(candidate.image)
            except BadImage as bad:
                result.skipped.add("unreadable_image", f"{candidate.id}: {bad.reason}")
                continue
        tasks.append(
            build_task(
                selected,
                image_url=url,
                controls=source.controls,
                model_version=source.model_version,
                interface=interface,
            )
        )
        images.append(candidate.image)
        result.reasons.update(selected.reasons)
    result.n_tasks = len(tasks)
    if local_files_root is not None and images:
        result.storage_folders = storage_folders(images, local_files_root)
    _write_atomic(output, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    _write_atomic(result.config_path, config + "\n")
    return result


def _progress(items: list, console: Console | None):
    if console is None:
        return items
    from rich.progress import track

    return track(items, description="review tasks", console=console, transient=True)


def _write_atomic(path: Path, text: str) -> None:
    """Write under a temporary name, then rename: an interrupted export leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
