"""``vlmopt predict``'s output files: JSONL, CSV and Parquet carry the same rows for every answer shape.

CSV and Parquet go through pandas / pyarrow, so they are read back here with those libraries;
each case holds an invalid row (no answer, no confidence) and a raw text that needs quoting.
"""

import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from vlmopt.predict import COLUMNS, write_rows

RAW = 'He said "a pug",\nthen stopped'
ANSWERS = {
    "single_label": "cat",
    "multi_label": ["cat", "indoor"],
    "multi_field": {"make": "audi", "year": "2012"},
}


TOP = [{"label": "cat", "probability": 0.75}, {"label": "dog", "probability": 0.25}]


def rows_for(answer) -> list[dict]:
    return [
        {"id": "inbox/a.png", "label": answer, "confidence": 0.12345678901234568, "valid": True, "raw": RAW,
         "abstained": True, "top_labels": TOP},
        {"id": "inbox/b.png", "label": None, "confidence": None, "valid": False, "raw": "pug", "abstained": False,
         "top_labels": None},
    ]


@pytest.mark.parametrize("kind", ANSWERS)
def test_parquet_keeps_the_rows_typed(tmp_path, kind):
    rows = rows_for(ANSWERS[kind])
    table = pq.read_table(write_rows(rows, tmp_path / "out" / "preds.parquet"))
    assert table.column_names == COLUMNS and table.to_pylist() == rows
    assert str(table.schema.field("confidence").type) == "double"


def test_parquet_confidence_stays_numeric_without_log_probs(tmp_path):
    rows = [{**row, "confidence": None} for row in rows_for("cat")]
    table = pq.read_table(write_rows(rows, tmp_path / "preds.parquet"))
    assert str(table.schema.field("confidence").type) == "double" and table["confidence"].null_count == 2


@pytest.mark.parametrize("kind", ANSWERS)
def test_csv_cells_are_text_with_answers_as_json(tmp_path, kind):
    rows = rows_for(ANSWERS[kind])
    path = write_rows(rows, tmp_path / "preds.CSV")
    assert path.read_text(encoding="utf-8").splitlines()[0] == ",".join(COLUMNS)
    cells = pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")
    answer = ANSWERS[kind]
    assert cells == [
        {"id": "inbox/a.png", "label": answer if kind == "single_label" else json.dumps(answer),
         "confidence": "0.12345678901234568", "valid": "True", "raw": RAW, "abstained": "True",
         "top_labels": json.dumps(TOP)},
        {"id": "inbox/b.png", "label": "", "confidence": "", "valid": "False", "raw": "pug", "abstained": "False",
         "top_labels": ""},
    ]


@pytest.mark.parametrize("name", ["preds.jsonl", "preds.txt"])
def test_jsonl_is_one_exact_json_row_per_line_and_the_default(tmp_path, name):
    rows = rows_for(ANSWERS["multi_field"])
    lines = write_rows(rows, tmp_path / name).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows


def test_no_rows_is_a_header_or_an_empty_file(tmp_path):
    assert write_rows([], tmp_path / "p.csv").read_text().splitlines() == [",".join(COLUMNS)]
    assert pq.read_table(write_rows([], tmp_path / "p.parquet")).num_rows == 0
    assert write_rows([], tmp_path / "p.jsonl").read_text() == ""
