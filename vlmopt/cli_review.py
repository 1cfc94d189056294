"""``vlmopt review``: model-assisted labeling with Label Studio (export the doubtful rows, import the labels).

Thin glue over :mod:`vlmopt.review`; registered on the main app in :mod:`vlmopt.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from vlmopt.cli_errors import check_output_file, err_console, user_errors
from vlmopt.review.selection import DEFAULT_MAX_CONFIDENCE, SELECTORS

review_app = typer.Typer(
    help="Model-assisted labeling with Label Studio: export the rows worth a person's time with the model's "
    "pre-annotations; import the labels a person gave into a manifest for the next optimize.",
    no_args_is_help=True,
)
console = Console()


@review_app.command("export")
@user_errors
def review_export(
    source: Annotated[
        Path,
        typer.Argument(
            help="A run directory (runs/<name>-<timestamp>/) or a `vlmopt predict` output (.jsonl, .csv, .parquet).",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="The Label Studio import (JSON list of tasks); the labeling config goes beside it "
            "as <stem>.labeling.xml.",
        ),
    ] = Path("review_tasks.json"),
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many tasks (the least confident).")] = None,
    select: Annotated[
        str,
        typer.Option(
            help="Why a row is worth a review, comma-separated: abstained (the threshold declined it), low_confidence "
            "(below --max-confidence), invalid (no answer in the class set), disagree (differs from gold, in a run).",
        ),
    ] = ",".join(SELECTORS),
    max_confidence: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="low_confidence: the answer's measured probability is below this.",
        ),
    ] = DEFAULT_MAX_CONFIDENCE,
    artifact: Annotated[
        Path | None,
        typer.Option(
            help="The artifact that made the rows: its task's labels (required for a predict output).",
        ),
    ] = None,
    image_root: Annotated[
        Path | None,
        typer.Option(
            help="Where relative image paths start: the folder predict ran in (default: the current folder).",
        ),
    ] = None,
    local_files_root: Annotated[
        Path | None,
        typer.Option(
            help="Point the tasks at Label Studio's local file serving (/data/local-files/?d=...) under this folder, "
            "its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT, instead of inlining each image as a data URI.",
        ),
    ] = None,
) -> None:
    """Write a Label Studio import of the rows worth a person's time, least confident first, pre-annotated.

    Each task holds the image (inline data URI, or a local-files URL with --local-files-root), the
    model's answer as a pre-annotation with its confidence as score, and why it was selected. Create
    a project with the labeling config written beside the tasks, import the tasks, label, then
    Export > JSON and run `vlmopt review import`.
    """
    from vlmopt.review import export_for_review, read_source

    check_output_file(output)
    selectors = tuple(name.strip() for name in select.split(",") if name.strip())
    review_source = read_source(source, artifact=artifact, image_root=image_root)
    result = export_for_review(
        review_source,
        output,
        selectors=selectors,
        max_confidence=max_confidence,
        limit=limit,
        local_files_root=local_files_root,
        console=console,
    )
    console.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
    hint = result.local_files_hint()
    if hint:
        err_console.print(f"note: {hint}", highlight=False, markup=False, soft_wrap=True)


@review_app.command("import")
@user_errors
def review_import(
    export: Annotated[
        Path,
        typer.Argument(
            help="Label Studio's JSON export of the review project (Export > JSON).",
            show_default=False,
        ),
    ],
    into: Annotated[
        Path,
        typer.Option(
            help="The manifest to merge into (.csv, .jsonl or .parquet with id, image, label; created if absent).",
            show_default=False,
        ),
    ],
    config: Annotated[
        Path | None,
        typer.Option(
            help="Task config whose labels the answers must be in (default: the class set the export recorded).",
        ),
    ] = None,
) -> None:
    """Merge the labels a person gave in Label Studio into a manifest, by id (a person's label wins).

    Skipped and unannotated tasks and labels outside the class set are left out and named. What
    the person changed against the model's pre-annotation is logged in <manifest stem>.review.jsonl.
    Point a config at the manifest with dataset: {source: MANIFEST, id_column: id, image_column:
    image, label_column: label}.
    """
    from vlmopt.config import load_config
    from vlmopt.review import import_review
    from vlmopt.review.source import config_controls

    check_output_file(into)
    controls = config_controls(load_config(config)) if config is not None else None
    result = import_review(export, into, controls=controls)
    console.print(result.summary(), highlight=False, markup=False, soft_wrap=True)
