"""The evaluator loop's own guarantees: the real program and DSPy's Evaluate over the scripted
model-edge double (``ScriptedEngine``), which here answers slowly or fails on cue."""

import threading

import dspy
import pytest
from PIL import Image

from vlmopt.config import TaskSpec
from vlmopt.datasets.images import to_dspy_image
from vlmopt.evaluate import EvaluationInterrupted, _Tally, evaluate_program
from vlmopt.metrics.records import PredictionRecord
from vlmopt.programs import create_program
from vlmopt.reports.run_dir import RunDir
from vlmopt.testing.scripted_engine import ScriptedCall, ScriptedEngine, scripted_lm

TASK = TaskSpec(labels=["red", "blue"])


class SlowBlueBrokenRed:
    """A model that fails every red image at once and holds every blue one until ``release`` is set."""

    def __init__(self):
        self.release = threading.Event()
        self.blue_started = threading.Event()

    def __call__(self, call: ScriptedCall) -> dict[str, float]:
        if call.query_image.getpixel((0, 0))[0] > 128:
            self.blue_started.wait(timeout=10)  # the slow item is in flight before the failures cancel the run
            raise RuntimeError("backend down")
        self.blue_started.set()
        assert self.release.wait(timeout=30), "the test never released the slow item"
        return {"red": 0.0, "blue": 1.0}


def examples(colours):
    rgb = {"red": (255, 0, 0), "blue": (0, 0, 255)}
    return [
        dspy.Example(id=f"{c}/{i}", label=c, image=to_dspy_image(Image.new("RGB", (8, 8), rgb[c])))
        for i, c in enumerate(colours)
    ]


def test_a_worker_finishing_after_the_cancel_changes_neither_the_outcome_nor_the_run(tmp_path):
    """DSPy shuts its pool down without waiting, so a slow item can finish after the run was
    cancelled. Its row must not land after the summary was read (that raced: 'dictionary changed
    size during iteration'), so the message, predictions.jsonl and failures.jsonl agree."""
    model = SlowBlueBrokenRed()
    run = RunDir.create(tmp_path, "cancel")
    before = set(threading.enumerate())
    with pytest.raises(EvaluationInterrupted) as stopped:
        evaluate_program(create_program(TASK), examples(["blue", "red", "red", "red", "red"]),
                         lm=scripted_lm(ScriptedEngine(model)), task=TASK, run=run, num_threads=2, max_errors=2)
    model.release.set()
    for worker in set(threading.enumerate()) - before:
        if worker.name.startswith("ThreadPoolExecutor"):  # DSPy's pool; tqdm's monitor never ends
            worker.join(timeout=30)
    said = str(stopped.value)
    assert "too many failed items" in said and "after 0 of 5 items" in said
    assert run.predictions() == []  # the blue row that finished late was not written behind the summary
    failed = [row["id"] for row in run.failures()]
    assert f"({len(failed)} failed;" in said and set(failed) <= {"red/1", "red/2", "red/3", "red/4"}


def record(item_id: str, predicted: str) -> PredictionRecord:
    return PredictionRecord(id=item_id, gold="red", predicted=predicted, raw=predicted, valid=True)


def test_first_result_per_item_wins_and_the_summary_is_in_example_order(tmp_path):
    """A straggler DSPy resubmits can finish twice, and threads finish in any order; the run keeps
    one row per item and hands the records back in the examples' order (a seeded bootstrap over
    them is then the same on every run)."""
    run = RunDir.create(tmp_path, "order")
    tally = _Tally(["a", "b", "c"])
    assert tally.add_record(record("c", "red"), True, run) == (1, 1.0)
    tally.add_error("b", "Timeout")
    assert tally.add_record(record("c", "blue"), False, run) is None  # the resubmitted copy
    assert tally.add_record(record("b", "red"), True, run) is None  # b already failed first
    assert tally.add_record(record("a", "blue"), False, run) == (2, 0.5)
    records, errors = tally.close()
    assert [r.id for r in records] == ["a", "c"] and errors == {"b": "Timeout"}
    assert [(r.id, r.predicted) for r in run.predictions()] == [("c", "red"), ("a", "blue")]
    assert tally.add_record(record("b", "red"), True, run) is None and len(run.predictions()) == 2
