"""Notebook helpers on the fixture runs, and notebooks/inspect_eval.ipynb executed headless."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from PIL import Image

from fixtures_runs import INVALID_IDS, SINGLE_LABEL_ROWS, WRONG_IDS
from vlmopt.reports.notebook import RUN_DIR_ENV, load_run, metrics_table, resolve_run_dir, show_confusion, show_grid

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "inspect_eval.ipynb"
GREEN, RED, AMBER = "#15803d", "#b91c1c", "#b45309"


def test_load_run_has_one_row_per_prediction_with_its_verdict(fixture_run_dir):
    df = load_run(fixture_run_dir)
    assert list(df["id"]) == [row[0] for row in SINGLE_LABEL_ROWS]
    assert set(df.loc[~df["correct"], "id"]) == WRONG_IDS
    assert set(df.loc[~df["valid"], "id"]) == INVALID_IDS
    assert set(df.loc[df["predicted"] == "invalid", "id"]) == INVALID_IDS
    assert df.set_index("id").loc["img_06", "raw"] == "It is a pug!"
    assert df["thumbnail"].str.startswith("data:image/jpeg").all()


def test_metrics_table_shows_accuracy_interval_and_counts(fixture_run_dir):
    table = metrics_table(fixture_run_dir)["value"]
    assert table["accuracy"] == pytest.approx(7 / 12)
    assert table["accuracy 95% CI"].count("–") == 1
    assert (table["images scored"], table["invalid outputs"], table["failed (not predicted)"]) == (12, 2, 1)
    assert table["skipped (unreadable)"] == 1
    assert table["split size test"] == 14


def _title_colours(fig) -> dict[str, str]:
    return {ax.get_title().split("\n")[0]: ax.title.get_color() for ax in fig.axes}


def test_show_grid_colours_titles_by_verdict_and_filters(fixture_run_dir):
    everything = show_grid(fixture_run_dir, n=100)
    colours = _title_colours(everything)
    assert len(colours) == len(SINGLE_LABEL_ROWS)
    for item_id, colour in colours.items():
        expected = AMBER if item_id in INVALID_IDS else RED if item_id in WRONG_IDS else GREEN
        assert colour == expected, item_id
    assert all(ax.get_images() for ax in everything.axes), "every card draws its thumbnail"

    df = load_run(fixture_run_dir)
    assert set(_title_colours(show_grid(df, only_misclassified=True))) == WRONG_IDS
    assert set(_title_colours(show_grid(df, gold="triangle", predicted="circle"))) == {"img_11"}
    assert set(_title_colours(show_grid(df, predicted="invalid"))) == INVALID_IDS
    assert len(show_grid(df, n=5).axes) == 5
    assert not show_grid(df, gold="nothing").axes


def test_show_confusion_draws_the_run_matrix_and_explains_when_there_is_none(
    fixture_run_dir, multi_label_run_dir, multi_field_run_dir
):
    fig = show_confusion(fixture_run_dir)
    assert fig.axes[0].get_images()[0].get_array().shape[:2] == Image.open(fixture_run_dir / "confusion.png").size[::-1]
    assert show_confusion(multi_field_run_dir, field="year").axes
    with pytest.raises(ValueError, match="field="):
        show_confusion(multi_field_run_dir)
    with pytest.raises(ValueError, match="no single confusion matrix"):
        show_confusion(multi_label_run_dir)


def test_resolve_run_dir_prefers_argument_then_env_then_newest(tmp_path, monkeypatch, fixture_run_dir):
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    runs = tmp_path / "runs"
    older, newer = runs / "a-1", runs / "b-2"
    for i, d in enumerate((older, newer)):
        d.mkdir(parents=True)
        (d / "metrics.json").write_text("{}")
        os.utime(d / "metrics.json", (1_000_000 + i, 1_000_000 + i))
    (runs / "unfinished").mkdir()
    assert resolve_run_dir(runs_root=runs) == newer
    monkeypatch.setenv(RUN_DIR_ENV, str(fixture_run_dir))
    assert resolve_run_dir(runs_root=runs) == fixture_run_dir
    assert resolve_run_dir(older) == older
    monkeypatch.delenv(RUN_DIR_ENV)
    with pytest.raises(FileNotFoundError, match=RUN_DIR_ENV):
        resolve_run_dir(runs_root=tmp_path / "empty")


def _outputs(cell) -> tuple[str, list[bytes]]:
    text, images = [], []
    for out in cell.outputs:
        text.append(out.get("text", ""))
        data = out.get("data", {})
        text.append(data.get("text/plain", ""))
        if "image/png" in data:
            images.append(base64.b64decode(data["image/png"]))
    return "\n".join(text), images


@pytest.mark.timeout(300)
def test_inspect_eval_notebook_runs_headless_on_a_run(fixture_run_dir, monkeypatch):
    monkeypatch.setenv(RUN_DIR_ENV, str(fixture_run_dir))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    resources = {"metadata": {"path": str(NOTEBOOK.parent)}}
    NotebookClient(nb, timeout=120, kernel_name="python3", resources=resources).execute()
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in cells for o in c.outputs if o.output_type == "error"]
    by_source = {c.source.splitlines()[-1]: _outputs(c) for c in cells}

    assert str(fixture_run_dir) in by_source["print(RUN_DIR)"][0]
    metrics_text = by_source["metrics_table(RUN_DIR)"][0]
    assert "0.583333" in metrics_text and "invalid outputs" in metrics_text
    wrong_text = by_source['wrong[["id", "gold", "predicted", "valid", "confidence", "raw"]]'][0]
    assert all(item_id in wrong_text for item_id in WRONG_IDS) and "It is a pug!" in wrong_text
    (grid_png,) = by_source["show_grid(df, only_misclassified=True)"][1]
    assert Image.open(io.BytesIO(grid_png)).size[0] > 300
    (confusion_png,) = by_source["    display(show_confusion(RUN_DIR, field=field))"][1]
    shown, drawn = Image.open(io.BytesIO(confusion_png)).size, Image.open(fixture_run_dir / "confusion.png").size
    assert all(0 <= a - b <= 40 for a, b in zip(shown, drawn, strict=True)), "the inline backend pads a little"
    assert str(fixture_run_dir / "report.html") in by_source["print(report)"][0]
    assert (fixture_run_dir / "report.html").exists()
