"""The predict loop on one machine: a bounded window of images in flight, each row written as it finishes.

Worker threads (``num_threads``, so the in-process engine can micro-batch concurrent calls and a
server sees concurrent requests) each take one :class:`~vlmopt.predict.inputs.Item`, decode it,
call the frozen program and hand back its row or failure (:func:`~vlmopt.predict.rows.predict_image`).
The main thread alone writes, so the sink needs no lock. At most ``window`` items are submitted
and not yet written; items are pulled from the (lazy) discovery only to refill it, so memory
holds at most ``num_threads`` decoded images and ``window`` paths — flat in the number of images.

Each worker runs under ``_dspy_compat.without_history(lm=lm)``: DSPy otherwise keeps the
last 10,000 calls, prompts with their base64 images included, in the LM's history — memory that
grows with the run for nothing a batch job reads.

Past ``max_failures`` failures the loop stops submitting, lets the calls in flight finish (their
rows are kept), and reports why; Ctrl-C leaves at once, the rows written so far kept.

Example::

    counts = run_stream(frozen.program, frozen.task, items, lm=lm, sink=sink, failures=log,
                        max_side=768, num_threads=8, max_failures=100, total=2000)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import dspy
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from vlmopt._dspy_compat import without_history
from vlmopt.config import TaskSpec
from vlmopt.predict.inputs import Item
from vlmopt.predict.rows import Failure, Outcome, predict_image
from vlmopt.predict.sinks import FailureLog, RowSink


@dataclass(frozen=True)
class StreamCounts:
    predicted: int  # rows written
    processed: int  # rows written + failures recorded
    stopped: str | None  # why the loop stopped early, or None
    wall_s: float  # seconds from the first submission to the last row


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]predict"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} img/s"),
        TextColumn("failed {task.fields[failed]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )


def run_stream(
    program: dspy.Module,
    task: TaskSpec,
    items: Iterator[Item],
    *,
    lm: dspy.BaseLM,
    sink: RowSink,
    failures: FailureLog,
    max_side: int,
    max_pixels: int | None = None,
    num_threads: int = 4,
    window: int | None = None,
    max_failures: int,
    total: int,
    console: Console | None = None,
) -> StreamCounts:
    """Predict ``items`` into ``sink`` / ``failures``; stop once more than ``max_failures`` have failed."""
    window = window or 2 * num_threads

    def work(item: Item) -> Outcome:
        with without_history(lm=lm):
            return predict_image(program, task, item, max_side=max_side, max_pixels=max_pixels)

    predicted = processed = 0
    stopped: str | None = None
    started = time.perf_counter()
    pending: set[Future[Outcome]] = set()
    executor = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="vlmopt-predict")
    try:
        with _progress(console) as progress:
            bar = progress.add_task("predict", total=total, rate=0.0, failed=0)
            while True:
                while stopped is None and len(pending) < window and (item := next(items, None)) is not None:
                    pending.add(executor.submit(work, item))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()  # predict_image returns failures, it does not raise them
                    if isinstance(outcome, Failure):
                        failures.append(outcome)
                    elif sink.append(outcome):
                        predicted += 1
                    processed += 1
                elapsed = time.perf_counter() - started
                progress.update(bar, advance=len(done), rate=processed / elapsed, failed=failures.count)
                if stopped is None and failures.count > max_failures:
                    stopped = _stop_reason(failures, max_failures)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: queued items dropped, none written
    return StreamCounts(predicted=predicted, processed=processed, stopped=stopped,
                        wall_s=time.perf_counter() - started)


def _stop_reason(failures: FailureLog, max_failures: int) -> str:
    first = failures.first
    detail = f"; first: {first.id}: {first.message.splitlines()[0] if first.message else first.reason}" if first else ""
    return (f"{failures.count} images failed, more than --max-failures allows ({max_failures}){detail}. "
            f"Failures are listed in {failures.path}; fix the cause and rerun the same command: "
            "the rows written are kept and skipped")
