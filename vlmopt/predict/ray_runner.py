"""``predict_on_ray``: the frozen program over a Ray Dataset of images, in a pool of actors, written as shards.

When one machine is not enough, Ray Data does the distributing; this module adds no scheduler,
queue or sharding of its own:

1. the inputs are discovered exactly as on one machine (:func:`~vlmopt.predict.inputs.discover`:
   files, folders, globs, manifests; paths only), ids the output already holds are dropped
   (resume), and the rest become a Ray Dataset (``ray.data.from_items``);
2. ``map_batches`` with a class (:class:`PredictActor`) runs an **actor pool** of ``actors``
   actors: each loads the artifact once and builds its LM once — the model in-process
   (``backend.kind: transformers``) or a client of a vLLM server / fleet behind ``--base-url`` —
   then calls :func:`~vlmopt.predict.rows.predict_image` per image, the one-machine code, so rows
   and failures are exactly the one-machine ones (same decode, same rendered prompt, same
   decision rule);
3. the rows are written by Ray Data as shards, typed by the task's
   :func:`~vlmopt.predict.rows.row_schema` (``write_parquet`` into a ``.parquet`` folder, or
   ``write_json`` — JSON lines — into a ``.jsonl`` folder); the failures (few) are collected on
   the driver and written to the same failures file as on one machine (id, stage, reason, message).

The artifact is verified on the driver and travels as its JSON text (actors on other nodes need
no shared disk for it); the images are read by the actors, so their paths must be readable on
every node (shared storage). The dataset is cut into blocks of ``batch_size`` items so every
actor of the pool gets work.

Example::

    ray.init()                                   # or ray.init("ray://head:10001"); address= does it too
    summary = predict_on_ray("artifact.json", ["inbox/"], "labels.parquet",
                             cfg=task_config, actors=4)
    summary.predicted, summary.failed, summary.exit_code
"""

from __future__ import annotations

import json
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlmopt.config import TaskConfig
from vlmopt.errors import VlmoptError
from vlmopt.predict.inputs import Item, check_inputs, discover, no_images_error
from vlmopt.predict.rows import COLUMNS, Failure, label_key, row_schema
from vlmopt.predict.run import artifact_max_side
from vlmopt.predict.sinks import FailureLog, OutputError, default_failures_path
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


def _rows_only(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_null(table.column("stage"))).select(COLUMNS)


def _failures_only(table: pa.Table) -> pa.Table:
    import pyarrow.compute as pc

    return table.filter(pc.is_valid(table.column("stage"))).select(["id", *FAILURE_COLUMNS])


def output_kind(output: Path) -> str:
    """``parquet`` or ``jsonl``: the shard format a ``--ray`` output folder holds."""
    kind = {".parquet": "parquet", ".jsonl": "jsonl"}.get(output.suffix.lower())
    if kind is None:
        raise OutputError(f"{output}: with --ray the output is a folder of shards named .parquet or .jsonl")
    if output.exists() and not output.is_dir():
        raise OutputError(f"{output} is a file; with --ray the output is a folder of shards: give another -o")
    return kind


def read_output_rows(output: Path) -> list[dict[str, Any]]:
    """Every row a ``--ray`` output folder holds (its shards; names starting with ``_`` or ``.`` skipped)."""
    if not output.is_dir():
        return []
    files = sorted(p for p in output.rglob("*") if p.is_file() and not p.name.startswith(("_", ".")))
    if output_kind(output) == "parquet":
        import pyarrow.parquet as pq

        return [row for p in files if p.suffix == ".parquet" for row in pq.read_table(p).to_pylist()]
    return [json.loads(line) for p in files for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


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
    image_column: str | None = None,
    cache: bool = False,
) -> PredictSummary:
    """Predict every image ``inputs`` name that ``output`` does not hold yet, on Ray Data; see the module docstring.

    ``cfg`` is the task config whose backend each actor builds (in-process model, or the
    OpenAI-compatible server at ``cfg.backend.base_url``). ``address``: a Ray cluster to join
    (``"auto"``, ``"ray://head:10001"``); None uses the Ray already initialised in this process,
    or starts a local one. ``actors``: the pool size; ``actor_cpus`` / ``actor_gpus``: what each
    actor reserves (one GPU per actor places one model replica per GPU).
    """
    from vlmopt.artifacts import load_artifact

    ray = import_ray()
    frozen = load_artifact(artifact)  # verified here once, before any actor starts
    output = Path(output)
    kind = output_kind(output)
    failures_path = Path(failures_path) if failures_path is not None else default_failures_path(output)
    args = check_inputs(inputs)
    done = {row["id"] for row in read_output_rows(output)}
    todo: list[dict[str, str]] = []
    skipped = 0
    for item in discover(args, image_column=image_column):
        if item.id in done:
            skipped += 1
        else:
            todo.append({"id": item.id, "source": item.source})
    if skipped + len(todo) == 0:
        raise no_images_error(args)
    failed: Counter[str] = Counter()
    predicted = 0
    wall_s = 0.0
    with FailureLog(failures_path) as failures:
        if todo:
            if not ray.is_initialized():
                try:
                    ray.init(address=address, include_dashboard=False, log_to_driver=False)
                except ConnectionError as exc:
                    raise RayConnectError(f"no Ray cluster at {address!r} ({exc}); start one with `ray start "
                                          "--head` or give --ray alone for a local Ray") from None
            started = time.perf_counter()
            blocks = -(-len(todo) // batch_size)  # Ray Data's own blocks: each one a batch for some actor
            outcomes = ray.data.from_items(todo, override_num_blocks=blocks).map_batches(
                PredictActor,
                fn_constructor_kwargs={
                    "artifact_json": Path(artifact).read_text(encoding="utf-8"),
                    "cfg": cfg, "max_side": max_side or artifact_max_side(frozen), "max_pixels": max_pixels,
                    "num_threads": num_threads, "cache": cache,
                },
                batch_size=batch_size, batch_format="pyarrow", concurrency=actors,
                num_cpus=actor_cpus, num_gpus=actor_gpus or None,
            ).materialize()
            rows = outcomes.map_batches(_rows_only, batch_format="pyarrow")
            output.mkdir(parents=True, exist_ok=True)
            if kind == "parquet":
                rows.write_parquet(str(output))
            else:
                rows.write_json(str(output), double_precision=15)  # pandas' default, 10 digits, rounds confidences
            for record in outcomes.map_batches(_failures_only, batch_format="pyarrow").take_all():
                failures.append(Failure(record["id"], record["stage"], record["reason"], record["message"]))
            predicted = rows.count()
            wall_s = time.perf_counter() - started
        failed = failures.by_stage.copy()
    labels = Counter(label_key(row["label"]) for row in read_output_rows(output))
    return PredictSummary(output=output, failures_path=failures_path, total=skipped + len(todo), skipped=skipped,
                          predicted=predicted, failed=failed, labels=labels, wall_s=wall_s)
