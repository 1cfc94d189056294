"""The evaluator loop: a program over labelled images -> prediction records, metrics, a run directory.

One loop serves ``vlmopt evaluate``, the optimizer's baseline / final test and notebooks. It runs
through ``dspy.Evaluate`` (threads, so the in-process engine can micro-batch), and writes each
record the moment its prediction is scored, so Ctrl-C keeps every finished row and a rerun
replays them from DSPy's disk cache instead of calling the model again.

Example::

    outcome = evaluate_program(program, examples, lm=lm, task=cfg.task, run=run, num_threads=4)
    outcome.metrics["accuracy"], len(outcome.records), outcome.failed_ids
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import dspy
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vlmopt.config import TaskSpec
from vlmopt.errors import VlmoptError
from vlmopt.metrics import answer_correct, compute_metrics
from vlmopt.metrics.records import PredictionRecord
from vlmopt.programs.records import prediction_record
from vlmopt.reports.run_dir import RunDir

logger = logging.getLogger(__name__)


class EvaluationInterrupted(VlmoptError, RuntimeError):
    """The run stopped early (Ctrl-C or too many failed items); finished rows are on disk."""

    prefix = "stopped"

    def __init__(self, message: str, *, by_user: bool):
        super().__init__(message)
        self.by_user = by_user
        self.exit_code = 130 if by_user else 2


@dataclass(frozen=True)
class SplitInfo:
    """Where the examples came from, as the metrics summary states it (``split``, sizes, skipped images)."""

    name: str | None = None  # "val", "test", "all" ...
    sizes: dict[str, int] | None = None  # every split's size, so a report says what was held out
    n_skipped: int = 0  # images the loader could not read (they are in no split)
    fingerprint: str | None = None  # of the seeded split: runs to compare must share it

    @classmethod
    def of(cls, name: str, splits) -> SplitInfo:
        """The info for split ``name`` of a ``LoadedSplits``."""
        return cls(name, splits.sizes(), len(splits.skipped), splits.fingerprint)


@dataclass
class EvalOutcome:
    records: list[PredictionRecord]
    failed_ids: list[str]
    metrics: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    model_calls: int | None = None  # requests that reached the model (cache hits don't), where counted


class _Tally:
    """The evaluation's shared results, closed the moment ``dspy.Evaluate`` hands back.

    DSPy's executor shuts its thread pool down without waiting, and resubmits an item that runs
    past its straggler timeout; so a worker can still finish after a cancel, and one item can
    finish twice. Every write takes the lock; the first result per item wins (as in DSPy's own
    results) and later ones are dropped, as is everything after close. The caller reads a frozen
    copy, in the examples' order, so the summary (its bootstrap interval too) does not depend on
    which thread finished first.
    """

    def __init__(self, ids: list[str]) -> None:
        self._order = {item_id: position for position, item_id in enumerate(ids)}
        self._lock = threading.Lock()
        self._records: dict[str, PredictionRecord] = {}
        self._errors: dict[str, str] = {}
        self._n_correct = 0
        self._closed = False

    def _taken(self, item_id: str) -> bool:
        return self._closed or item_id in self._records or item_id in self._errors

    def add_record(self, record: PredictionRecord, correct: bool, run: RunDir | None) -> tuple[int, float] | None:
        """Keep one scored record (and write it to the run): (done, running accuracy), None if dropped."""
        with self._lock:
            if self._taken(record.id):
                return None
            self._records[record.id] = record
            self._n_correct += correct
            if run is not None:
                run.append_prediction(record)
            return len(self._records), self._n_correct / len(self._records)

    def add_error(self, item_id: str, reason: str) -> None:
        with self._lock:
            if not self._taken(item_id):
                self._errors[item_id] = reason

    def close(self) -> tuple[list[PredictionRecord], dict[str, str]]:
        """Stop taking results; the records and errors as they stand, in the examples' order."""
        with self._lock:
            self._closed = True
            records = sorted(self._records.values(), key=lambda r: self._order[r.id])
            errors = dict(sorted(self._errors.items(), key=lambda item: self._order[item[0]]))
            return records, errors


class _Timed(dspy.Module):
    """Runs the program on one example and times it; ``id`` rides along so failures are named."""

    def __init__(self, program: dspy.Module, tally: _Tally):
        super().__init__()
        self.program = program
        self._tally = tally

    def forward(self, image: dspy.Image, id: str) -> dspy.Prediction:  # noqa: A002 - the example's key
        start = time.perf_counter()
        try:
            pred = self.program(image=image)
        except Exception as exc:  # noqa: BLE001 - recorded per item, the run goes on
            self._tally.add_error(id, f"{type(exc).__name__}: {exc}")
            raise
        pred.latency_s = time.perf_counter() - start
        return pred


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.2f} img/s"),
        TextColumn("acc {task.fields[acc]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def evaluate_program(
    program: dspy.Module,
    examples: list[dspy.Example],
    *,
    lm: dspy.LM,
    task: TaskSpec,
    labels: list[str] | None = None,
    run: RunDir | None = None,
    num_threads: int = 4,
    max_errors: int | None = None,
    seed: int = 0,
    console: Console | None = None,
    description: str = "evaluate",
    split: SplitInfo = SplitInfo(),
    replays: EvalOutcome | None = None,
) -> EvalOutcome:
    """Predict every example, write rows as they finish, and summarise.

    The summary (``outcome.metrics``, what ``metrics.json`` holds) is written here once: the
    metrics of the records, the failures, ``split``'s bookkeeping, and — when this evaluation
    ``replays`` another's calls from the cache, so its own timings are cache lookups — the
    latency and tokens of the calls replayed.

    ``max_errors`` (default: a tenth of the items, at least 5) stops a run whose backend is
    failing, instead of grinding through every remaining item; the finished rows are kept and
    :class:`EvaluationInterrupted` names how many were done.
    """
    tally = _Tally([str(ex.id) for ex in examples])
    started = time.perf_counter()

    with _progress(console) as progress:
        bar = progress.add_task(description, total=len(examples), rate=0.0, acc="-")

        def metric(example: dspy.Example, pred: dspy.Prediction, trace=None) -> float:
            record = prediction_record(example, pred, task)
            correct = answer_correct(record.gold, record.predicted, task.output)
            if (running := tally.add_record(record, correct, run)) is not None:
                done, acc = running
                progress.update(bar, advance=1, rate=done / (time.perf_counter() - started), acc=f"{acc:.3f}")
            return float(correct)

        max_errors = max_errors if max_errors is not None else max(5, len(examples) // 10)
        evaluator = dspy.Evaluate(
            devset=[ex.with_inputs("image", "id") for ex in examples],
            metric=metric,
            num_threads=num_threads,
            display_progress=False,
            max_errors=max_errors,
            provide_traceback=False,
        )
        try:
            with dspy.context(lm=lm, track_usage=True):
                evaluator(_Timed(program, tally))
        except Exception as exc:
            if "cancelled" not in str(exc):
                raise
            records, errors = tally.close()
            _record_failures(run, errors)
            by_user = len(errors) < max_errors
            cause = "interrupted" if by_user else "too many failed items"
            raise EvaluationInterrupted(
                f"{description} stopped ({cause}) after {len(records)} of {len(examples)} items "
                f"({len(errors)} failed{'; first error: ' + next(iter(errors.values())) if errors else ''}). "
                "Finished predictions are kept; rerun the same command to finish (cached calls replay).",
                by_user=by_user,
            ) from None

    records, errors = tally.close()
    _record_failures(run, errors)
    if not records and errors:  # fewer items than max_errors, all failed: nothing to score
        raise EvaluationInterrupted(
            f"{description}: all {len(examples)} items failed (first error: {next(iter(errors.values()))}); "
            "check the backend (model, server URL) and rerun",
            by_user=False,
        )
    metrics = compute_metrics(
        records, output_kind=task.output, labels=labels or task.labels, fields=task.fields, seed=seed
    )
    metrics["n_failed"] = len(errors)
    if split.name is not None:
        metrics.update(split=split.name, split_sizes=split.sizes, n_skipped=split.n_skipped,
                       split_fingerprint=split.fingerprint)
    if replays is not None:
        metrics.update({key: replays.metrics[key] for key in ("latency", "tokens")})
    return EvalOutcome(records=records, failed_ids=list(errors), metrics=metrics, errors=errors)


def _record_failures(run: RunDir | None, errors: dict[str, str]) -> None:
    if run is None:
        return
    for item_id, reason in errors.items():
        run.append_failure(item_id, "predict", reason)
