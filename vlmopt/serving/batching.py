"""Micro-batching: gather the blocking calls of many threads into one batched model call.

DSPy evaluates and optimizes with a thread pool (``num_threads``); each thread makes one blocking
LM call at a time. A GPU is far better used by one padded batch of N prompts than by N calls
taking turns, so callers hand their work to a ``MicroBatcher`` and wait: one worker thread takes
the first waiting item, keeps collecting until ``max_batch_size`` items or ``max_wait_ms`` have
passed, and runs them together. Each caller gets its own result or its own exception back.

Example::

    batcher = MicroBatcher(lambda items: [x * 2 for x in items], max_batch_size=8, max_wait_ms=10)
    batcher.submit(21)  # -> 42, possibly computed in a batch with other threads' items
    batcher.stats.batch_sizes  # e.g. [1, 4, 4]

Closing is safe from any thread at any moment: a ``submit`` racing a ``close`` is either queued
before the stop marker (and served) or refused with ``RuntimeError``, never stranded behind it.
One process-wide exit hook stops every live batcher (``_LIVE``), however many engines were built.
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

BatchFn = Callable[[Sequence[Any]], Sequence[Any]]
"""Runs a batch; returns one entry per item: its result, or an ``Exception`` meant for that item."""


@dataclass
class BatchStats:
    """Counters a caller can read to see what batching did (tests assert on them)."""

    batch_sizes: list[int] = field(default_factory=list)
    items: int = 0
    failed_items: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, size: int, failed: int) -> None:
        with self.lock:
            self.batch_sizes.append(size)
            self.items += size
            self.failed_items += failed

    def histogram(self) -> dict[int, int]:
        """Batch size -> number of batches of that size."""
        with self.lock:
            sizes = list(self.batch_sizes)
        return {size: sizes.count(size) for size in sorted(set(sizes))}


class MicroBatcher:
    """One worker thread running ``fn`` over batches of items submitted from any thread.

    ``fn`` returns one entry per item; an ``Exception`` entry is raised in that item's caller
    only. If ``fn`` itself raises, every item of the batch is retried alone, so a single bad
    item (say, one that runs out of memory or trips a processor) fails only its own caller.
    """

    def __init__(self, fn: BatchFn, *, max_batch_size: int = 8, max_wait_ms: float = 10.0,
                 name: str = "micro-batcher"):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self._fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._queue: queue.Queue[tuple[Any, Future] | None] = queue.Queue()
        # Guards ``_closed`` and the queue's stop marker: once the marker is queued nothing is
        # queued after it, so every item the worker can see is ahead of it.
        self._lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()
        _LIVE.add(self)

    def submit(self, item: Any) -> Any:
        """Block until ``item`` has been processed; return its result or raise its exception."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("MicroBatcher is closed: its engine was closed before this request was queued")
            self._queue.put((item, future))
        return future.result()

    def close(self) -> None:
        """Finish the queued items, then stop the worker thread (idempotent, from any thread)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)
        _LIVE.discard(self)
        self._worker.join()

    def shutdown(self) -> None:
        """Fail the items still queued, let the running batch finish, stop the worker."""
        with self._lock:
            self._closed = True
            while True:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is not None:
                    entry[1].set_exception(RuntimeError("the engine shut down before this item ran"))
            self._queue.put(None)  # the drain may have taken close()'s marker
        _LIVE.discard(self)
        self._worker.join()

    def _collect(self, first: tuple[Any, Future]) -> tuple[list[tuple[Any, Future]], bool]:
        batch = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            timeout = deadline - time.monotonic()
            try:
                entry = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            self._process(batch)

    def _process(self, batch: list[tuple[Any, Future]]) -> None:
        items = [item for item, _ in batch]
        try:
            results = list(self._fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(items)} items")
        except Exception as exc:  # noqa: BLE001 - isolate the failing item by running each alone
            results = [exc] if len(items) == 1 else [self._run_alone(item) for item in items]
        failed = sum(isinstance(result, BaseException) for result in results)
        self.stats.record(len(items), failed)
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _run_alone(self, item: Any) -> Any:
        try:
            (result,) = self._fn([item])
            return result
        except Exception as exc:  # noqa: BLE001 - handed to this item's caller
            return exc


_LIVE: weakref.WeakSet[MicroBatcher] = weakref.WeakSet()
"""Batchers whose worker still runs; the one exit hook stops them."""


@atexit.register
def _shutdown_live_batchers() -> None:
    """At interpreter exit (say after Ctrl-C) a worker may be inside a torch call; letting
    finalization tear native threads down under it aborts the process. Stop them first."""
    for batcher in list(_LIVE):
        batcher.shutdown()
