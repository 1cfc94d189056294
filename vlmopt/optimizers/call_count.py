"""Model calls counted at the LM edge: what a method asked for, what reached a model, how long it took.

Budgets are comparable only if the calls are counted the same way for every method, outside the
methods' own bookkeeping. Two counts, because DSPy's cache sits between them:

* **asked** — every ``dspy.LM`` call made while the method ran (a DSPy callback's
  ``on_lm_start``), cache hits included: what the method spent of its budget;
* **reached** — the requests that got to the model (the engines' own counters; a replayed call
  never does), None where a backend cannot say — a rerun over a warm cache reaches ~0.

Example::

    with counting_calls(task_lm, prompt_lm) as calls:
        run_the_method()
    calls.summary(budget=400)   # {"asked": 412, "asked_task": 398, "reached_task": 0, "wall_s": 3.1, ...}
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dspy
from dspy.utils import BaseCallback

from vlmopt.serving.factory import model_calls


class _AskedCalls(BaseCallback):
    """Counts LM calls by model name (SIMBA's temperature copies share their model's name)."""

    def __init__(self) -> None:
        self.by_model: Counter[str] = Counter()
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with self._lock:
            self.by_model[str(getattr(instance, "model", "?"))] += 1


class CallTally:
    """The counts of one ``counting_calls`` block, read after it ends."""

    def __init__(self, task_lm: dspy.LM, writer_lm: dspy.LM | None):
        self.task_lm, self.writer_lm = task_lm, writer_lm
        self.asked = _AskedCalls()
        self._before = (model_calls(task_lm), model_calls(writer_lm) if writer_lm is not None else None)
        self._started = time.perf_counter()
        self.reached_task: int | None = None
        self.reached_writer: int | None = None
        self.wall_s = 0.0

    def _finish(self) -> None:
        self.wall_s = time.perf_counter() - self._started
        self.reached_task = _since(self.task_lm, self._before[0])
        if self.writer_lm is not None:
            self.reached_writer = _since(self.writer_lm, self._before[1])

    def summary(self, budget: int | None = None) -> dict[str, Any]:
        task_name = str(self.task_lm.model)
        asked_task = self.asked.by_model.get(task_name, 0)
        return {
            "budget_calls": budget,
            "asked": sum(self.asked.by_model.values()),
            "asked_task": asked_task,
            "asked_writer": sum(self.asked.by_model.values()) - asked_task,
            "reached_task": self.reached_task,
            "reached_writer": self.reached_writer,
            "wall_s": round(self.wall_s, 3),
        }


def _since(lm: dspy.LM, before: int | None) -> int | None:
    after = model_calls(lm)
    return None if before is None or after is None else after - before


@contextmanager
def counting_calls(task_lm: dspy.LM, writer_lm: dspy.LM | None = None) -> Iterator[CallTally]:
    """Count the calls made inside the block (threads DSPy starts inherit the callback)."""
    tally = CallTally(task_lm, writer_lm if writer_lm is not task_lm else None)
    with dspy.context(callbacks=[*dspy.settings.get("callbacks", []), tally.asked]):
        try:
            yield tally
        finally:
            tally._finish()
