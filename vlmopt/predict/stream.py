"""The predict loop on one machine: a bounded window of images in flight, each row written as it finishes.

Worker threads (``num_threads``, so the in-process engine can micro-batch concurrent calls and a
server sees concurrent requests) each take one :class:`~vlmopt.predict.inputs.Item`, decode it,
call the frozen program and hand back its row or failure (:func:`~vlmopt.predict.rows.predict_image`).
The main thread alone writes, through an :class:`OutcomeWriter`, so the sink needs no lock. At
most ``window`` items are submitted and not yet written; items are pulled from the (lazy)
discovery only to refill it, so memory holds at most ``num_threads`` decoded images and
``window`` paths — flat in the number of images.

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
from collections.abc import Iterable, Iterator
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
    first_s: float = 0.0  # seconds until the first outcome came back (a Ray pool's start-up shows here)


class OutcomeWriter:
    """Writes outcomes as they arrive — rows to the sink, failures to the log — behind a progress bar.

    Shared by every runner (the thread window here, Ray's stream of blocks), so they count, show
    and stop alike: once more than ``max_failures`` images have failed, ``stopped`` says why and
    the runner stops feeding new images.
    """

    def __init__(self, sink: RowSink, failures: FailureLog, *, max_failures: int, total: int,
                 console: Console | None = None) -> None:
        self.sink, self.failures, self.max_failures = sink, failures, max_failures
        self.predicted = self.processed = 0
        self.stopped: str | None = None
        self.started = time.perf_counter()
        self.first_at: float | None = None
        self._progress = Progress(
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
        self._bar = self._progress.add_task("predict", total=total, rate=0.0, failed=0)

    def write(self, outcomes: Iterable[Outcome]) -> None:
        n = 0
        for outcome in outcomes:
            if isinstance(outcome, Failure):
                self.failures.append(outcome)
            elif self.sink.append(outcome):
                self.predicted += 1
            n += 1
        if self.first_at is None and n:
            self.first_at = time.perf_counter()
        self.processed += n
        elapsed = time.perf_counter() - self.started
        self._progress.update(self._bar, advance=n, rate=self.processed / elapsed, failed=self.failures.count)
        if self.stopped is None and self.failures.count > self.max_failures:
            self.stopped = _stop_reason(self.failures, self.max_failures)

    def counts(self) -> StreamCounts:
        return StreamCounts(predicted=self.predicted, processed=self.processed, stopped=self.stopped,
                            wall_s=time.perf_counter() - self.started,
                            first_s=(self.first_at or self.started) - self.started)

    def __enter__(self) -> OutcomeWriter:
        self._progress.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()


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

    pending: set[Future[Outcome]] = set()
    executor = ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="vlmopt-predict")
    try:
        with OutcomeWriter(sink, failures, max_failures=max_failures, total=total, console=console) as writer:
            while True:
                while writer.stopped is None and len(pending) < window and (item := next(items, None)) is not None:
                    pending.add(executor.submit(work, item))
                if not pending:
                    break
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                writer.write(future.result() for future in done)  # predict_image returns failures, never raises
    finally:
        executor.shutdown(wait=False, cancel_futures=True)  # Ctrl-C: queued items dropped, none written
    return writer.counts()


def _stop_reason(failures: FailureLog, max_failures: int) -> str:
    first = failures.first
    detail = f"; first: {first.id}: {first.message.splitlines()[0] if first.message else first.reason}" if first else ""
    return (f"{failures.count} images failed, more than --max-failures allows ({max_failures}){detail}. "
            f"Failures are listed in {failures.path}; fix the cause and rerun the same command: "
            "the rows written are kept and skipped")
