"""``predict_to_file``: a frozen program over images -> an output file that a rerun resumes.

The whole one-machine job, callable from a notebook as from ``vlmopt predict``:

1. open the output (:func:`~vlmopt.predict.sinks.open_sink`) and read back the ids it holds;
2. walk the inputs once to count what is left (paths only), so the progress bar has a total and
   an ETA, and a finished run loads no model at all;
3. stream the rest through :func:`~vlmopt.predict.stream.run_stream`, rows appended as they
   finish, failures to the failures file (rewritten by each run);
4. return a :class:`~vlmopt.predict.summary.PredictSummary` whose counts add up.

Images are decoded exactly as ``evaluate``'s loader decodes them, at the artifact's
``image_preprocessing.max_side`` unless ``max_side`` is given, and the frozen program applies
its own decision rule, so a row equals the one ``vlmopt evaluate --artifact`` records for the
same image.

DSPy's response cache is off for the run (``cache=True`` to keep it): nightly images are new, the
resume is by id, and the in-memory cache (up to a million responses) would grow with the run.

Example::

    frozen = load_artifact("artifact.json")
    summary = predict_to_file(frozen, ["inbox/"], "labels.jsonl", lm=lambda: create_lm(cfg))
    summary.predicted, summary.skipped, summary.failed, summary.labels
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import dspy
from rich.console import Console

from vlmopt.artifacts import FrozenProgram
from vlmopt.predict.inputs import check_inputs, discover, no_images_error
from vlmopt.predict.limits import FailureLimit
from vlmopt.predict.sinks import FailureLog, default_failures_path, open_sink
from vlmopt.predict.stamp import claim_output
from vlmopt.predict.stream import run_stream
from vlmopt.predict.summary import PredictSummary
from vlmopt.serving.factory import close_lm

DEFAULT_MAX_SIDE = 768
"""The loader's default, for artifacts written before ``image_preprocessing`` was recorded."""


def artifact_max_side(frozen: FrozenProgram) -> int:
    """The longer side the program's images were downscaled to when it was optimized."""
    pre = frozen.artifact.image_preprocessing
    return pre.max_side if pre is not None else DEFAULT_MAX_SIDE


def predict_to_file(
    frozen: FrozenProgram,
    inputs: Iterable[str | Path],
    output: str | Path,
    *,
    lm: dspy.BaseLM | Callable[[], dspy.BaseLM],
    failures_path: str | Path | None = None,
    max_side: int | None = None,
    max_pixels: int | None = None,
    num_threads: int = 4,
    max_failures: FailureLimit | int | None = None,
    image_column: str | None = None,
    rows_per_part: int | None = None,
    cache: bool = False,
    console: Console | None = None,
    artifact_path: str | Path = "",
) -> PredictSummary:
    """Predict every image ``inputs`` name that ``output`` does not hold yet; see the module docstring.

    ``lm`` is an LM, or a function building one — called only when some image is left, and the
    LM it builds is closed at the end. ``max_failures``: a :class:`FailureLimit`, a count, or
    None for the default. ``rows_per_part``: Parquet output only (rows per part file).
    An output holding rows of another artifact is refused (:mod:`~vlmopt.predict.stamp`);
    ``artifact_path`` is only named in that message.
    """
    output = Path(output)
    failures_path = Path(failures_path) if failures_path is not None else default_failures_path(output)
    args = check_inputs(inputs)
    if next(discover(args, image_column=image_column), None) is None:  # before any output file is created
        raise no_images_error(args)
    limit = max_failures if isinstance(max_failures, FailureLimit) else FailureLimit(count=max_failures)
    with open_sink(output, frozen.task, rows_per_part=rows_per_part) as sink, FailureLog(failures_path) as failures:
        claim_output(output, frozen, has_rows=bool(sink.ids), artifact_path=artifact_path)
        skipped, todo = count_left(args, sink.ids, image_column)
        counts = None
        if todo:
            built = None if isinstance(lm, dspy.BaseLM) else lm()
            run_lm = built or lm
            try:
                counts = run_stream(
                    frozen.program, frozen.task,
                    (item for item in discover(args, image_column=image_column) if item.id not in sink.ids),
                    lm=run_lm if cache else run_lm.copy(cache=False), sink=sink, failures=failures,
                    max_side=max_side or artifact_max_side(frozen), max_pixels=max_pixels,
                    num_threads=num_threads, max_failures=limit.allowed(todo), total=todo, console=console,
                )
            finally:
                if built is not None:
                    close_lm(built)
        labels = sink.labels.copy()
        failed = failures.by_stage.copy()
    return PredictSummary(
        output=output,
        failures_path=failures_path,
        total=skipped + max(todo, counts.processed if counts else 0),
        skipped=skipped,
        predicted=counts.predicted if counts else 0,
        failed=failed,
        not_attempted=max(0, todo - counts.processed) if counts else 0,
        labels=labels,
        stopped=counts.stopped if counts else None,
        wall_s=counts.wall_s if counts else 0.0,
        first_s=counts.first_s if counts else 0.0,
    )


def count_left(args: list[str], done: set[str], image_column: str | None) -> tuple[int, int]:
    """(images the output holds, images left): one walk over the paths, no pixels read."""
    skipped = todo = 0
    for item in discover(args, image_column=image_column):
        if item.id in done:
            skipped += 1
        else:
            todo += 1
    return skipped, todo
