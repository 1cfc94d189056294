"""``vlmopt report RUN_A RUN_B ...``: one table across runs, and a refusal when they scored other images.

The fixture runs are written with the real writers (``tests/fixtures_runs.py``): an optimize-shaped
run (its baseline prompt in ``baseline/``, ``baseline_metrics.json``), and a ``baseline`` folder with
CLIP-style sub-runs carrying the cost fields; the expected cells are computed from their metrics.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save_file
from typer.testing import CliRunner

from fixtures_runs import OPTIMIZED_CHANGES, single_label_run
from vlmopt.cli import app
from vlmopt.reports.comparison_outputs import comparison_frame, comparison_html, markdown_table, rich_table
from vlmopt.reports.run_comparison import SplitMismatch, check_same_test_set, collect_runs, runs_in
from vlmopt.reports.run_dir import METRICS, RunDir

FINGERPRINT = "f" * 64
CLIP_COST = {
    "family": "clip",
    "parameters": 87_849_216,
    "latency_ms_per_image": 12.5,
    "model_calls": 30,
    "wall_s": 4.25,
    "model": "openai/clip-vit-base-patch32",
}


def _metrics(path: Path) -> dict:
    return json.loads((path / METRICS).read_text())


def _patch_metrics(path: Path, **extra) -> Path:
    RunDir(path).write_json(METRICS, {**_metrics(path), **extra})
    return path


def optimize_run(root: Path, model_dir: Path | None = None) -> Path:
    """An optimize-shaped run: the winner at the top, the config's prompt in baseline/."""
    baseline = single_label_run(root, "base")
    path = single_label_run(root, "shapes-opt", changes=OPTIMIZED_CHANGES)
    shutil.copytree(baseline, path / "baseline")
    (path / "baseline" / METRICS).unlink()  # optimize keeps the baseline's metrics beside, not inside
    RunDir(path).write_json("baseline_metrics.json", {**_metrics(baseline), "split_fingerprint": FINGERPRINT})
    shutil.rmtree(baseline)
    _patch_metrics(path, split_fingerprint=FINGERPRINT, method="prompt-optimized", model_calls=412, wall_s=3600.0)
    if model_dir is not None:
        config = (path / "config.yaml").read_text().replace("id: LiquidAI/LFM2-VL-450M", f"id: {model_dir}")
        (path / "config.yaml").write_text(config)
    return path


def baseline_folder(root: Path, fingerprint: str = FINGERPRINT) -> Path:
    """A ``vlmopt baseline`` run folder: zero_shot/ and linear_probe/ sub-runs on the same images."""
    folder = root / "shapes-baseline-x"
    folder.mkdir()
    for name, method, changes in (
        ("zero_shot", "zero-shot", {}),
        ("linear_probe", "linear-probe", {"img_10": "triangle"}),
    ):
        run = single_label_run(folder, name, changes=changes)
        run.rename(folder / name)
        _patch_metrics(folder / name, method=method, split_fingerprint=fingerprint, **CLIP_COST)
    return folder


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    model_dir = tmp_path / "tiny-vlm"
    model_dir.mkdir()
    save_file(
        {"a": np.zeros((3, 4), dtype=np.float32), "b": np.zeros(5, dtype=np.float32)},
        str(model_dir / "model.safetensors"),
    )
    return {"optimize": optimize_run(tmp_path, model_dir), "baseline": baseline_folder(tmp_path)}


def test_an_optimize_run_and_a_baseline_folder_give_four_rows_in_method_order(runs):
    rows = collect_runs([runs["optimize"], runs["baseline"]])
    assert [r.label for r in rows] == ["baseline prompt", "optimized prompt", "CLIP zero-shot", "CLIP linear probe"]
    assert rows[0].path == runs["optimize"] / "baseline" and rows[2].path == runs["baseline"] / "zero_shot"
    assert len({r.test_ids for r in rows}) == 1 and len(rows[0].test_ids) == 13  # 12 rows + 1 failed to predict
    assert check_same_test_set(rows) == {}


def test_table_cells_come_from_each_runs_metrics(runs):
    rows = collect_runs([runs["optimize"], runs["baseline"]])
    frame = comparison_frame(rows)
    optimized, probe = _metrics(runs["optimize"]), _metrics(runs["baseline"] / "linear_probe")
    assert frame["accuracy"].tolist()[1] == optimized["accuracy"] and frame["accuracy"].tolist()[3] == probe["accuracy"]
    assert frame["accuracy_ci_low"].tolist()[1] == optimized["accuracy_ci"]["low"]
    assert frame["macro_f1"].tolist()[3] == probe["macro_f1"] and frame["ece"].tolist()[3] == probe["ece"]
    # cost: recorded fields where written; the VLM's latency from its rows, parameters from its safetensors headers
    assert frame["parameters"].tolist() == [17, 17, CLIP_COST["parameters"], CLIP_COST["parameters"]]
    assert frame["latency_ms_per_image"].tolist()[1] == pytest.approx(1000 * optimized["latency"]["mean_s"])
    assert frame["latency_ms_per_image"].tolist()[2] == 12.5
    assert frame["model_calls"].tolist()[1:] == [412, 30, 30] and np.isnan(frame["model_calls"].tolist()[0])
    md = markdown_table(rows)
    table_lines = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_lines) == 2 + 4
    assert f"| optimized prompt | tiny-vlm | 12 | {optimized['accuracy']:.3f} [" in md
    assert "| 87.8M | 30 | 4.2 s |" in md and "| 17 | 412 | 60.0 min |" in md


def test_the_html_page_has_one_row_per_run_and_is_self_contained(runs):
    page = comparison_html(collect_runs([runs["optimize"], runs["baseline"]]))
    assert page.count("<tr") == 1 + 4  # the header and one row per run
    assert "CLIP linear probe" in page and "http" not in page.replace("http-equiv", "")


def test_runs_on_other_test_images_are_refused_naming_both(runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    fewer = single_label_run(other, "fewer")
    predictions = (fewer / "predictions.jsonl").read_text().splitlines()
    (fewer / "predictions.jsonl").write_text("\n".join(predictions[:-2]) + "\n")  # 2 test images fewer
    rows = collect_runs([runs["optimize"], fewer])
    with pytest.raises(
        SplitMismatch,
        match=r"did not score the same test set.*11 images against 13, 0 only in it "
        r"and 2 only in the first run",
    ):
        check_same_test_set(rows)
    notes = check_same_test_set(rows, allow=True)
    assert list(notes) == [fewer]
    assert "(!)" in markdown_table(rows, notes) and 'data-flagged="1"' in comparison_html(rows, notes)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(rich_table(rows, notes))
    assert [line.split("  ")[1] for line in console.export_text().splitlines() if "prompt" in line] == [
        "baseline prompt",
        "optimized prompt",
        "prompt (!)",
    ]


def test_same_images_under_another_split_fingerprint_are_refused(runs, tmp_path):
    (tmp_path / "seed2").mkdir()
    other = baseline_folder(tmp_path / "seed2", fingerprint="0" * 64)
    with pytest.raises(SplitMismatch, match="split fingerprints differ"):
        check_same_test_set(collect_runs([runs["optimize"], other]))


def test_a_val_run_is_not_compared_with_test_runs(runs, tmp_path):
    (tmp_path / "val").mkdir()
    val_run = _patch_metrics(single_label_run(tmp_path / "val", "val"), split="val")
    with pytest.raises(SplitMismatch, match="it scored the val split, the first run the test split"):
        check_same_test_set(collect_runs([runs["optimize"], val_run]))


def test_a_folder_with_no_runs_is_a_clear_error(tmp_path):
    from vlmopt.reports.run_dir import NotARunDir

    with pytest.raises(NotARunDir, match="has no metrics.json"):
        runs_in(tmp_path)


runner = CliRunner()


def test_cli_report_writes_the_table_in_every_form(runs, tmp_path):
    out = tmp_path / "cmp"
    result = runner.invoke(
        app,
        ["report", str(runs["optimize"]), str(runs["baseline"]), "-o", str(out)],
        env={"COLUMNS": "200"},
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    for label in ("baseline prompt", "optimized prompt", "CLIP zero-shot", "CLIP linear probe"):
        assert label in result.output
    with open(out / "comparison.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["prompt-baseline", "prompt-optimized", "zero-shot", "linear-probe"]
    assert (out / "comparison.html").is_file() and (out / "comparison.md").read_text().startswith("| run |")


def test_cli_report_on_a_baseline_folder_compares_its_sub_runs(runs):
    result = runner.invoke(app, ["report", str(runs["baseline"])], env={"COLUMNS": "200"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (out,) = runs["baseline"].parent.glob("comparison-*")
    assert {p.name for p in out.iterdir()} == {"comparison.html", "comparison.csv", "comparison.md"}


def test_cli_report_two_runs_also_writes_the_flips_page(runs, tmp_path):
    zero_shot, probe = runs["baseline"] / "zero_shot", runs["baseline"] / "linear_probe"
    result = runner.invoke(
        app, ["report", str(zero_shot), str(probe), "-o", str(tmp_path / "c")], catch_exceptions=False
    )
    assert result.exit_code == 0 and (probe / "compare-zero_shot.html").is_file()


def test_cli_report_refusal_is_one_line_and_exit_2(runs, tmp_path):
    (tmp_path / "val").mkdir()
    val_run = _patch_metrics(single_label_run(tmp_path / "val", "val"), split="val")
    result = runner.invoke(app, ["report", str(runs["optimize"]), str(val_run)], catch_exceptions=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--allow-different-splits" in " ".join(result.output.split())
    flagged = runner.invoke(
        app,
        ["report", str(runs["optimize"]), str(val_run), "--allow-different-splits", "-o", str(tmp_path / "c")],
        catch_exceptions=False,
    )
    assert flagged.exit_code == 0 and "(!)" in flagged.output
