"""Predict's pieces without a model: what the inputs name, outputs that reopen with their ids, the limits.

The outputs are real files, reopened as a rerun reopens them; a kill is the file state it
leaves (rows in the Parquet journal but no part, a row cut short), written here directly.
The real SIGKILL of a running ``vlmopt predict`` is in ``test_predict_stream.py``.
"""

import json
import shutil

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from vlmopt.config import TaskSpec
from vlmopt.datasets.errors import DatasetError
from vlmopt.predict import COLUMNS, Failure, FailureLimit, discover, outcome_of, row_schema
from vlmopt.predict.limits import FailureLimitError
from vlmopt.predict.parquet_sink import PENDING, ParquetSink
from vlmopt.predict.sinks import FailureLog, OutputError, default_failures_path, open_sink

TASKS = {
    "single_label": (TaskSpec(labels=["cat", "dog"]), "cat"),
    "multi_label": (TaskSpec(output="multi_label", labels=["cat", "indoor"]), ["cat", "indoor"]),
    "multi_field": (TaskSpec(output="multi_field", fields={"make": ["audi"], "year": ["2012"]}),
                    {"make": "audi", "year": "2012"}),
}
RAW = 'He said "a pug",\nthen stopped'


def row(item_id: str, answer="cat", valid=True) -> dict:
    return {"id": item_id, "label": answer if valid else None, "confidence": 0.5 if valid else None,
            "valid": valid, "raw": RAW, "abstained": False,
            "top_labels": [{"label": "cat", "probability": 0.5}] if valid else None}


def png(path, colour=(200, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


# --- inputs -------------------------------------------------------------------------------------------


def test_folders_globs_files_and_manifests_are_discovered_once_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("inbox/b.png", "inbox/a.png", "inbox/sub/c.jpg", "extra/d.png", "extra/e.png", "listed/f.png"):
        png(tmp_path / name)
    (tmp_path / "inbox" / "notes.txt").write_text("not an image")
    (tmp_path / "extra" / "skip.txt").write_text("not an image")
    (tmp_path / "list.csv").write_text("image,label\nlisted/f.png,cat\nextra/d.png,dog\n")
    args = ["inbox", "extra/*", "inbox/a.png", "list.csv"]
    items = list(discover(args))
    assert [i.id for i in items] == ["inbox/a.png", "inbox/b.png", "inbox/sub/c.jpg", "extra/d.png",
                                     "extra/e.png", "listed/f.png"]  # extra/d.png again (manifest): once
    listed = items[-1]
    assert listed.source == str(tmp_path / "listed" / "f.png")  # manifest paths are relative to the manifest


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_manifest_is_streamed_by_its_path_column(tmp_path, suffix):
    png(tmp_path / "imgs" / "0.png")
    frame = pd.DataFrame({"label": ["cat", "dog"], "file": ["imgs/0.png", "imgs/missing.png"]})
    path = tmp_path / f"list{suffix}"
    {".csv": lambda: frame.to_csv(path, index=False), ".jsonl": lambda: frame.to_json(path, orient="records",
     lines=True), ".parquet": lambda: frame.to_parquet(path)}[suffix]()
    assert [i.id for i in discover([path])] == ["imgs/0.png", "imgs/missing.png"]  # a missing file: a failure later


def test_a_manifest_without_a_path_column_names_its_columns(tmp_path):
    (tmp_path / "list.csv").write_text("a,b\nx.png,y.png\n")
    with pytest.raises(DatasetError, match=r"\['a', 'b'\].*--image-column"):
        list(discover([tmp_path / "list.csv"]))
    assert [i.id for i in discover([tmp_path / "list.csv"], image_column="b")] == ["y.png"]


def test_a_path_that_names_nothing_fails_before_any_work(tmp_path):
    with pytest.raises(DatasetError, match="absent does not exist"):
        discover([tmp_path, tmp_path / "absent"]).__next__()
    assert list(discover([str(tmp_path / "*.png")])) == []  # a glob may match nothing (the run says so)


# --- sinks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv", "out.parquet"])
@pytest.mark.parametrize("kind", TASKS)
def test_an_output_reopens_with_its_ids_and_appends_without_duplicates(tmp_path, name, kind):
    task, answer = TASKS[kind]
    path = tmp_path / name
    with open_sink(path, task) as sink:
        assert sink.append(row("a", answer)) and sink.append(row("b", answer, valid=False))
    with open_sink(path, task) as sink:
        assert sink.ids == {"a", "b"}
        assert not sink.append(row("a", answer))  # already there
        assert sink.append(row("c", answer))
        assert sum(sink.labels.values()) == 3 and sink.labels["(invalid)"] == 1
    rows = read_back(path)
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    if name != "out.csv":  # CSV cells are text; JSONL and Parquet keep the answer's shape
        assert rows[0]["label"] == answer and rows[1]["label"] is None and rows[0]["raw"] == RAW


def read_back(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert list(frame.columns) == COLUMNS
        return frame.to_dict("records")
    assert list(pd.read_parquet(path).columns) == COLUMNS  # pandas reads the folder of parts as one table
    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("name", ["out.jsonl", "out.csv"])
def test_a_row_cut_short_is_dropped_on_reopening(tmp_path, name):
    path = tmp_path / name
    task = TASKS["single_label"][0]
    with open_sink(path, task) as sink:
        sink.append(row("a"))
    with path.open("a") as f:
        f.write('{"id": "b", "label": "ca' if name.endswith("jsonl") else 'b,cat,0.5,Tr')
    with open_sink(path, task) as sink:
        assert sink.ids == {"a"}
        sink.append(row("b"))
    assert [r["id"] for r in read_back(path)] == ["a", "b"]


def test_parquet_after_a_kill_turns_the_journal_into_a_part_exactly_once(tmp_path):
    path = tmp_path / "out.parquet"
    task = TASKS["single_label"][0]
    sink = ParquetSink(path, task, rows_per_part=2)
    for i in range(5):
        sink.append(row(f"r{i}"))
    # killed here: two parts of two rows, the fifth row only in the journal
    assert [p.name for p in sink.parts()] == ["part-00000.parquet", "part-00001.parquet"]
    assert (path / PENDING).read_text().count("\n") == 1
    assert pq.read_table(path).num_rows == 4  # readers skip the journal (its name starts with _)
    # and killed once more between writing a part and emptying the journal: its rows are in both
    shutil.copy(path / "part-00001.parquet", tmp_path / "saved.parquet")
    journal = "".join(json.dumps(row(f"r{i}")) + "\n" for i in (2, 3, 4))
    (path / PENDING).write_text(journal)
    (path / "_part-00009.tmp").write_bytes(b"half a part")
    with ParquetSink(path, task, rows_per_part=2) as again:
        assert again.ids == {f"r{i}" for i in range(5)}
        again.append(row("r5"))
    ids = pq.read_table(path).column("id").to_pylist()
    assert sorted(ids) == [f"r{i}" for i in range(6)]  # every row once
    assert not (path / PENDING).exists() and not list(path.glob("*.tmp"))


def test_parquet_parts_share_the_task_schema_even_when_a_part_has_no_answer(tmp_path):
    for kind, (task, answer) in TASKS.items():
        path = tmp_path / f"{kind}.parquet"
        with ParquetSink(path, task, rows_per_part=1) as sink:
            sink.append(row("invalid", answer, valid=False))  # a part whose label column is all null
            sink.append(row("valid", answer))
        table = pq.read_table(path)
        assert table.schema.remove_metadata().equals(row_schema(task)), kind
        assert table.column("label").to_pylist() == [None, answer]


def test_outputs_that_are_not_predict_outputs_are_refused(tmp_path):
    task = TASKS["single_label"][0]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(OutputError, match="not a predict output"):
        open_sink(tmp_path / "other.csv", task)
    pd.DataFrame([row("a")]).to_parquet(tmp_path / "single.parquet")
    with pytest.raises(OutputError, match="single Parquet file"):
        open_sink(tmp_path / "single.parquet", task)
    with ParquetSink(tmp_path / "cats.parquet", task) as sink:
        sink.append(row("a"))
    with pytest.raises(OutputError, match="another task"):
        open_sink(tmp_path / "cats.parquet", TASKS["multi_label"][0])


def test_the_failures_file_starts_empty_each_run(tmp_path):
    path = default_failures_path(tmp_path / "labels.csv")
    assert path.name == "labels.failures.jsonl"
    with FailureLog(path) as log:
        log.append(Failure("a.png", "read", "corrupt", "a.png could not be decoded"))
    with FailureLog(path) as log:
        log.append(Failure("b.png", "predict", "call_failed", "LMTransportError: refused"))
        assert log.count == 1 and log.first.id == "b.png"
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["b.png"]


# --- rows and limits ----------------------------------------------------------------------------------


def test_no_prediction_is_a_failure_row_not_a_crash():
    outcome = outcome_of("a.png", None, TASKS["single_label"][0])
    assert outcome == Failure("a.png", "predict", "no_prediction", outcome.message)


@pytest.mark.parametrize(("text", "n", "allowed"), [
    ("10", 2000, 10), ("0", 2000, 0), ("5%", 2000, 100), ("0.05", 2000, 100), ("100%", 7, 7), ("1.0", 7, 7),
    (None, 2000, 200), (None, 12, 5),
])
def test_max_failures_is_a_count_or_a_fraction(text, n, allowed):
    assert FailureLimit.parse(text).allowed(n) == allowed


@pytest.mark.parametrize("text", ["-1", "ten", "150%", "1.5", ""])
def test_a_bad_max_failures_is_refused(text):
    with pytest.raises(FailureLimitError, match="a count"):
        FailureLimit.parse(text)
