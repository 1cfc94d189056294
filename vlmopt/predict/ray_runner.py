"""``predict_on_ray``: the frozen program over a Ray Dataset of images, in a pool of actors, rows streamed home.

When one machine is not enough, Ray Data does the distributing; this module adds no scheduler,
queue or sharding of its own:

1. the inputs are discovered exactly as on one machine (:func:`~vlmopt.predict.inputs.discover`:
   files, folders, globs, manifests of paths or URLs), ids the output already holds are dropped
   (resume), and the rest become a Ray Dataset (``ray.data.from_items``, one block per
   ``batch_size`` items so every actor of the pool gets work);
2. ``map_batches`` with a class (:class:`PredictActor`) runs an **actor pool** of ``actors``
   actors: each loads the artifact once and builds its LM once — the model in-process
   (``backend.kind: transformers``; ``actor_gpus=1`` places one replica per GPU) or a client of a
   vLLM server / fleet behind ``--base-url`` — then calls
   :func:`~vlmopt.predict.rows.predict_image` per image, the one-machine code, so rows and
   failures are exactly the one-machine ones (same decode, same rendered prompt, same decision rule);
3. the driver consumes the stream of finished blocks (``iter_batches``, in completion order) and
   writes them with the one-machine sinks and :class:`~vlmopt.predict.stream.OutcomeWriter`: the
   same output formats (JSONL, CSV, a Parquet folder of parts), appended as blocks finish, so a
   killed run keeps every finished block and a rerun — on Ray or on one machine — resumes from
   the same file; the same failures file, progress bar and ``--max-failures`` stop (the stream is
   closed, Ray cancels the rest).

Rows are small (about 200 bytes), so one driver writing them keeps up with thousands of images a
second; the pixels never leave the actors. The artifact is verified on the driver and travels as
its JSON text (actors on other nodes need no shared disk for it); the images are read by the
actors, so their paths must be readable on every node (shared storage) or be URLs.

Example::

    ray.init()                                   # or ray.init("ray://head:10001"); address= does it too
    summary = predict_on_ray("artifact.json", ["inbox/"], "labels.parquet",
                             cfg=task_config, actors=4)
    summary.predicted, summary.failed, summary.exit_code
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
from rich.console import Console

from vlmopt.config import TaskConfig
from vlmopt.errors import VlmoptError
from vlmopt.predict.inputs import Item, check_inputs, discover, no_images_error
from vlmopt.predict.limits import FailureLimit
from vlmopt.predict.rows import Failure, Outcome, row_schema
from vlmopt.predict.run import artifact_max_side
from vlmopt.predict.sinks import FailureLog, default_failures_path, open_sink
from vlmopt.predict.stamp import claim_output
from vlmopt.predict.stream import OutcomeWriter
from vlmopt.predict.summary import PredictSummary

FAILURE_COLUMNS = ["stage", "reason", "message"]
"""Extra columns of the actors' output: null on a row, set on a failure (split apart before writing)."""
RAY_INSTALL = "pip install 'vlmopt[ray]'   (or: pip install 'ray[data]>=2.60')"


class RayNotInstalled(VlmoptError, ImportError):
    """``--ray`` without Ray Data installed."""


class RayConnectError(VlmoptError, ConnectionError):
    """No Ray cluster at the address given."""


def import_ray():
    """``ray`` and ``ray.data``, or a one-line error saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401 - the extra, not only the core
    except ImportError as exc:
        raise RayNotInstalled(f"--ray needs Ray Data, which is not installed ({exc}): {RAY_INSTALL}") from None
    return ray


def _outcome_schema(task) -> pa.Schema:
    schema = row_schema(task)
    for name in FAILURE_COLUMNS:
        schema = schema.append(pa.field(name, pa.string()))
    return schema


class PredictActor:
    """One actor of the pool: the artifact and the LM built once, then batches of (id, source) -> outcomes.

    ``num_threads`` calls run concurrently inside the actor (the in-process engine micro-batches
    them; a server sees concurrent requests), each under ``_dspy_compat.without_history(lm=...)``.
    """

    def __init__(self, artifact_json: str, cfg: TaskConfig, *, max_side: int, max_pixels: int | None,
                 num_threads: int = 1, cache: bool = False) -> None:
        from vlmopt.artifacts import load_artifact
        from vlmopt.serving.factory import create_lm

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "artifact.json"
            path.write_text(artifact_json, encoding="utf-8")
            self.frozen = load_artifact(path)
        self.lm = create_lm(cfg)
        self.run_lm = self.lm if cache else self.lm.copy(cache=False)
        self.max_side, self.max_pixels = max_side, max_pixels
        self.schema = _outcome_schema(self.frozen.task)
        self.pool = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="vlmopt-ray-predict")

    def _one(self, item: Item):
        from vlmopt._dspy_compat import without_history
        from vlmopt.predict.rows import predict_image

        with without_history(lm=self.run_lm):
            return predict_image(self.frozen.program, self.frozen.task, item,
                                 max_side=self.max_side, max_pixels=self.max_pixels)

    def __call__(self, batch: pa.Table) -> pa.Table:
        items = [Item(i, s) for i, s in zip(batch.column("id").to_pylist(), batch.column("source").to_pylist(),
                                             strict=True)]
        records: list[dict[str, Any]] = []
        for outcome in self.pool.map(self._one, items):
            if isinstance(outcome, Failure):
                records.append({"id": outcome.id, "stage": outcome.stage, "reason": outcome.reason,
                                "message": outcome.message})
            else:
                records.append(outcome)
        return pa.Table.from_pylist(records, schema=self.schema)


def outcomes_of(table: pa.Table, schema: pa.Schema) -> Iterator[Outcome]:
    """The rows and failures of one block the actors returned (a failure has ``stage`` set)."""
    for record in table.to_pylist():
        if record["stage"] is not None:
            yield Failure(record["id"], record["stage"], record["reason"], record["message"])
        else:
            yield {name: record[name] for name in schema.names}


def start_ray(ray, address: str | None) -> None:
    """Join the cluster at ``address`` (None: the one in RAY_ADDRESS, else a new local Ray), unless joined."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws the run's one bar and summary (OutcomeWriter)
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled", "execution finished"
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise RayConnectError(f"no Ray cluster at {address!r} ({exc}); start one with `ray start --head` "
                              "or give --ray alone for a local Ray") from None


def predict_on_ray(
    artifact: str | Path,
    inputs: Iterable[str | Path],
    output: str | Path,
    *,
    cfg: TaskConfig,
    address: str | None = None,
    actors: int = 2,
    num_threads: int = 1,
    batch_size: int = 8,
    actor_cpus: float = 1.0,
    actor_gpus: float = 0.0,
    failures_path: str | Path | None = None,
    max_side: int | None = None,
    max_pixels: int | None = None,
    max_failures: FailureLimit | int | None = None,
    image_column: str | None = None,
    rows_per_part: int | None = None,
    cache: bool = False,
    console: Console | None = None,
) -> PredictSummary:
    """Predict every image ``inputs`` name that ``output`` does not hold yet, on Ray Data; see the module docstring.

    ``cfg`` is the task config whose backend each actor builds (in-process model, or the
    OpenAI-compatible server at ``cfg.backend.base_url``). ``address``: a Ray cluster to join
    (``"auto"``, ``"ray://head:10001"``); None uses the Ray already initialised in this process,
    or starts a local one. ``actors``: the pool size; ``actor_cpus`` / ``actor_gpus``: what each
    actor reserves (one GPU per actor places one model replica per GPU). ``num_threads``: calls in
    flight inside each actor. The output, failures file and ``max_failures`` are
    :func:`~vlmopt.predict.run.predict_to_file`'s.
    """
    from vlmopt.artifacts import load_artifact

    ray = import_ray()
    frozen = load_artifact(artifact)  # verified here once, before any actor starts
    output = Path(output)
    failures_path = Path(failures_path) if failures_path is not None else default_failures_path(output)
    args = check_inputs(inputs)
    if next(discover(args, image_column=image_column), None) is None:  # before any output file is created
        raise no_images_error(args)
    limit = max_failures if isinstance(max_failures, FailureLimit) else FailureLimit(count=max_failures)
    with open_sink(output, frozen.task, rows_per_part=rows_per_part) as sink, FailureLog(failures_path) as failures:
        claim_output(output, frozen, has_rows=bool(sink.ids), artifact_path=artifact)
        todo: list[dict[str, str]] = []
        skipped = 0
        for item in discover(args, image_column=image_column):
            if item.id in sink.ids:
                skipped += 1
            else:
                todo.append({"id": item.id, "source": item.source})
        counts = None
        if todo:
            start_ray(ray, address)
            outcomes = ray.data.from_items(todo, override_num_blocks=-(-len(todo) // batch_size)).map_batches(
                PredictActor,
                fn_constructor_kwargs={
                    "artifact_json": Path(artifact).read_text(encoding="utf-8"),
                    "cfg": cfg, "max_side": max_side or artifact_max_side(frozen), "max_pixels": max_pixels,
                    "num_threads": num_threads, "cache": cache,
                },
                batch_size=batch_size, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                num_cpus=actor_cpus, num_gpus=actor_gpus or None,
            )
            schema = row_schema(frozen.task)
            with OutcomeWriter(sink, failures, max_failures=limit.allowed(len(todo)), total=len(todo),
                               console=console) as writer:
                blocks = iter(outcomes.iter_batches(batch_size=None, batch_format="pyarrow"))
                try:
                    for block in blocks:
                        writer.write(outcomes_of(block, schema))
                        if writer.stopped:
                            break
                finally:
                    blocks.close()  # stops the executor: Ray cancels the blocks not yet done
            counts = writer.counts()
        labels = sink.labels.copy()
        failed = failures.by_stage.copy()
    processed = counts.processed if counts else 0
    return PredictSummary(output=output, failures_path=failures_path, total=skipped + len(todo), skipped=skipped,
                          predicted=counts.predicted if counts else 0, failed=failed,
                          not_attempted=len(todo) - processed, labels=labels,
                          stopped=counts.stopped if counts else None, wall_s=counts.wall_s if counts else 0.0,
                          first_s=counts.first_s if counts else 0.0)
