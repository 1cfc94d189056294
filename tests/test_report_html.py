"""The HTML run report and run comparison, checked on the fixture runs' parsed markup.

The filters' behaviour in a real browser is tested in test_report_browser.py; here the page's
content: one card per prediction with the right verdict, counts, tables, optional sections, and
that nothing in it points outside the file.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fixtures_runs import (
    FIELDS,
    INVALID_IDS,
    MULTI_LABEL,
    SHAPES,
    SINGLE_LABEL_ROWS,
    WRONG_IDS,
    thumbnail,
    write_run,
)
from vlmopt.metrics.records import PredictionRecord
from vlmopt.reports.html import REPORT, compare_runs, write_report
from vlmopt.reports.run_view import load_run_view

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts)

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        found = []
        for child in self.children:
            classes = (child.attrs.get("class") or "").split()
            if (tag is None or child.tag == tag) and (cls is None or cls in classes):
                found.append(child)
            found.extend(child.find_all(tag, cls))
        return found

    def by_id(self, element_id: str) -> Node:
        (node,) = [n for n in self.find_all() if n.attrs.get("id") == element_id]
        return node


class _TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs))
        self.stack[-1].children.append(node)
        self.stack[-1].parts.append(node)
        if tag not in _VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def parse(path: Path) -> Node:
    builder = _TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    builder.close()
    assert builder.stack == [builder.root], "unclosed elements"
    return builder.root


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def report(fixture_run_dir) -> Node:
    return parse(write_report(fixture_run_dir))


def test_report_is_one_self_contained_file(fixture_run_dir):
    path = write_report(fixture_run_dir)
    assert path == fixture_run_dir / REPORT
    html = path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    doc = parse(path)
    assert not doc.find_all("link"), "stylesheets must be inline"
    assert all("src" not in s.attrs for s in doc.find_all("script")), "scripts must be inline"
    images = doc.find_all("img")
    assert len(images) == len(SINGLE_LABEL_ROWS)
    assert all(img.attrs["src"].startswith("data:image/jpeg;base64,") for img in images)


def test_one_card_per_prediction_with_its_verdict(report):
    cards = {c.attrs["data-id"]: c for c in report.by_id("grid").find_all("div", "card")}
    assert list(cards) == [row[0] for row in SINGLE_LABEL_ROWS]
    for item_id, gold, predicted, raw, confidence in SINGLE_LABEL_ROWS:
        card = cards[item_id]
        assert card.attrs["data-correct"] == ("0" if item_id in WRONG_IDS else "1")
        assert card.attrs["data-valid"] == ("0" if item_id in INVALID_IDS else "1")
        assert card.attrs["data-gold"] == gold
        assert card.attrs["data-pred"] == (predicted or "invalid")
        assert json.loads(card.attrs["data-pred-tags"]) == [predicted or "invalid"]
        assert card.attrs["data-confidence"] == ("" if confidence is None else str(confidence))
        assert raw in card.text, "each card shows the raw model output"
        classes = card.attrs["class"].split()
        assert ("wrong" in classes) == (item_id in WRONG_IDS)
        assert ("invalid" in classes) == (item_id in INVALID_IDS)
        if item_id in INVALID_IDS:
            assert "INVALID" in card.text


def test_headline_shows_accuracy_interval_and_every_count(report, fixture_run_dir):
    metrics = json.loads((fixture_run_dir / "metrics.json").read_text())
    assert report.by_id("accuracy").text == f"{metrics['accuracy']:.3f}" == "0.583"
    ci = metrics["accuracy_ci"]
    assert f"95% CI {ci['low']:.3f}–{ci['high']:.3f}" in squash(report.by_id("headline").text)
    counts = squash(report.by_id("counts").text)
    assert "12 scored · 10 valid · 2 invalid · 1 failed · 1 skipped" in counts
    assert "train 6, val 10, test 14" in counts


def test_confusion_table_and_per_class_table_match_metrics(report, fixture_run_dir):
    metrics = json.loads((fixture_run_dir / "metrics.json").read_text())
    (table,) = report.find_all("table", "confusion")
    rows = table.find_all("tr")[1:]
    assert [r.find_all("th")[0].text for r in rows] == SHAPES
    counts = [[int(td.text) for td in r.find_all("td", "cell")] for r in rows]
    assert counts == metrics["confusion"]["matrix"]
    # Clicking a cell selects its images: the cell names its gold / predicted tags.
    cell = rows[2].find_all("td", "cell")[0]
    assert (cell.attrs["data-gold"], cell.attrs["data-pred"]) == ("triangle", "circle")
    (per_class,) = report.find_all("table", "per-class")
    triangle = [r for r in per_class.find_all("tr") if r.find_all("td") and r.find_all("td")[0].text == "triangle"]
    # triangle: 3 predicted (img_07, img_08, img_09), 2 right, 4 gold -> P 2/3, R 1/2, F1 4/7
    assert [td.text for td in triangle[0].find_all("td")][1:] == ["0.667", "0.500", "0.571", "4"]


def test_filters_offer_the_labels_that_occur(report):
    gold = [o.attrs["value"] for o in report.by_id("f-gold").find_all("option")]
    pred = [o.attrs["value"] for o in report.by_id("f-pred").find_all("option")]
    assert gold == ["", *SHAPES]
    assert pred == ["", *SHAPES, "invalid"]
    assert report.by_id("f-wrong").attrs["type"] == "checkbox"
    assert report.by_id("f-conf").attrs["type"] == "range"


def test_failures_are_listed_and_optimize_sections_absent_without_their_files(report):
    assert "TimeoutError: server did not answer" in report.by_id("failures").text
    ids = {n.attrs.get("id") for n in report.find_all()}
    assert "baseline" not in ids and "prompt" not in ids


def test_optimize_run_shows_baseline_next_to_optimized_and_the_prompt(optimized_run_dir):
    doc = parse(write_report(optimized_run_dir))
    cells = [r.find_all("td") for r in doc.by_id("baseline").find_all("tr")[1:]]
    rows = {tds[0].text: [squash(td.text) for td in tds] for tds in cells}
    accuracy = rows["accuracy"]
    assert accuracy[1].startswith("0.583") and accuracy[2].startswith("0.667")
    assert accuracy[3] == "+0.083"
    assert rows["invalid rate"][1:] == ["0.167", "0.083", "-0.083"]
    prompt = squash(doc.by_id("prompt").text)
    assert "Classify the shape in the picture." in prompt and "json_schema" in prompt


def test_multi_label_run_renders_answers_as_text(multi_label_run_dir):
    doc = parse(write_report(multi_label_run_dir))
    cards = {c.attrs["data-id"]: c for c in doc.find_all("div", "card")}
    assert cards["ml_0"].attrs["data-gold"] == "cat, indoor"
    assert cards["ml_0"].attrs["data-correct"] == "1", "label order carries no meaning"
    assert json.loads(cards["ml_1"].attrs["data-pred-tags"]) == ["dog", "indoor"]
    assert cards["ml_1"].attrs["data-correct"] == "0"
    assert cards["ml_2"].attrs["data-pred"] == "invalid"
    assert [o.attrs["value"] for o in doc.by_id("f-gold").find_all("option")] == ["", *MULTI_LABEL]
    assert not doc.find_all("table", "confusion"), "multi-label runs have no confusion matrix"


def test_multi_field_run_renders_fields_and_a_matrix_per_field(multi_field_run_dir):
    doc = parse(write_report(multi_field_run_dir))
    cards = {c.attrs["data-id"]: c for c in doc.find_all("div", "card")}
    assert cards["mf_1"].attrs["data-pred"] == "make: bmw, year: 2012"
    assert json.loads(cards["mf_1"].attrs["data-gold-tags"]) == ["make=bmw", "year=2011"]
    assert [c.attrs["data-correct"] for c in cards.values()] == ["1", "0", "0"]
    assert len(doc.find_all("table", "confusion")) == len(FIELDS)
    first_cell = doc.find_all("table", "confusion")[0].find_all("td", "cell")[0]
    assert first_cell.attrs["data-gold"] == "make=audi"


def test_model_text_is_escaped_and_only_inline_images_are_shown(tmp_path):
    hostile = '<script>alert("x")</script><img src="https://example.com/a.png">'
    records = [
        PredictionRecord(id="a", gold="circle", predicted=None, raw=hostile, valid=False,
                         thumbnail="https://example.com/thumb.jpg"),
        PredictionRecord(id="b", gold="square", predicted="square", raw="{}", valid=True,
                         thumbnail=thumbnail("square", seed=1)),
    ]
    run = write_run(tmp_path, "hostile", records, task={"labels": SHAPES},
                    metrics_args={"output_kind": "single_label", "labels": SHAPES})
    path = write_report(run)
    doc = parse(path)
    assert [img.attrs["src"][:11] for img in doc.find_all("img")] == ["data:image/"]
    assert hostile in doc.find_all("div", "card")[0].text, "shown as text"
    assert len(doc.find_all("script")) == 1, "only the report's own script"
    assert 'src="https://' not in path.read_text(encoding="utf-8")


def test_compare_runs_lists_flipped_images_by_id(fixture_run_dir, optimized_run_dir, tmp_path):
    path = compare_runs(fixture_run_dir, optimized_run_dir)
    assert path == optimized_run_dir / f"compare-{fixture_run_dir.name}.html"
    doc = parse(path)
    right_to_wrong = [c.attrs["data-id"] for c in doc.by_id("right_to_wrong").find_all("div", "card")]
    wrong_to_right = [c.attrs["data-id"] for c in doc.by_id("wrong_to_right").find_all("div", "card")]
    assert right_to_wrong == ["img_09"]
    assert wrong_to_right == ["img_02", "img_06"]
    assert doc.by_id("n-right-to-wrong").text == "1" and doc.by_id("n-wrong-to-right").text == "2"
    metric_rows = {r.find_all("td")[0].text: r for r in doc.by_id("metrics").find_all("tr")[1:]}
    assert squash(metric_rows["accuracy"].find_all("td")[3].text) == "+0.083"
    assert "good" in metric_rows["accuracy"].find_all("td")[3].attrs["class"]
    assert "http://" not in path.read_text(encoding="utf-8")
    elsewhere = compare_runs(fixture_run_dir, optimized_run_dir, tmp_path / "out" / "cmp.html")
    assert elsewhere.exists()


def test_a_directory_that_is_not_a_finished_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        write_report(tmp_path)


def test_run_view_counts_failures_by_stage_when_metrics_lack_them(fixture_run_dir):
    view = load_run_view(fixture_run_dir)
    view.metrics = {k: v for k, v in view.metrics.items() if k not in ("n_failed", "n_skipped")}
    assert view.counts() == {"n": 12, "n_valid": 10, "n_invalid": 2, "n_failed": 1, "n_skipped": 1}
