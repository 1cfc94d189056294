"""Bad input end to end through the CLI: a message naming the item and the fix, a counted skip
where the run can go on, a non-zero exit where it cannot, never a traceback, no row lost.

The figure the reliability doc quotes (cases tried / handled / crashed / rows lost) is the count
of the cases below; each case fails its test if it crashes or loses a row.
"""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from vlmopt.cli import app
from vlmopt.testing.images import BAD_IMAGE_REASONS, CONVERTIBLE_KINDS, make_bad_images

runner = CliRunner()
CLASSES = ("circle", "square", "triangle")


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=True)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"crash: {result.exception!r}"
    )
    assert "Traceback" not in result.output
    return result


def config(tmp_path: Path, model_dir: Path, source: Path, **dataset) -> Path:
    cfg = {
        "name": "bad",
        "model": {"id": str(model_dir), "max_new_tokens": 16},
        "dataset": {"source": str(source), "max_image_side": 64, "max_image_pixels": 1_000_000,
                    "splits": {"train": 0.25, "val": 0.25, "test": 0.5}, **dataset},
        "task": {"labels": list(CLASSES)},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 2},
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def good_image(path: Path, colour) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 40), colour).save(path)


@pytest.fixture
def messy_folder(tmp_path) -> tuple[Path, dict[str, Path]]:
    """4 good images per class plus every awkward kind spread over the class folders."""
    root = tmp_path / "folder"
    for c, colour in zip(CLASSES, [(200, 0, 0), (0, 200, 0), (0, 0, 200)], strict=True):
        for i in range(4):
            good_image(root / c / f"{c}_{i}.png", colour)
    bad = make_bad_images(tmp_path / "bad")
    placed = {}
    for i, (kind, src) in enumerate(sorted(bad.items())):
        if kind == "missing":
            continue  # a folder cannot list a file that does not exist; the manifest case covers it
        dest = root / CLASSES[i % 3] / f"{kind}{src.suffix}"
        shutil.copyfile(src, dest)
        placed[kind] = dest
    return root, placed


def test_messy_folder_runs_and_counts_every_skip(tmp_path, tiny_idefics3_dir, messy_folder):
    root, placed = messy_folder
    result = invoke("evaluate", config(tmp_path, tiny_idefics3_dir, root, kind="imagefolder"), "--split", "all")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    failures = [json.loads(line) for line in (run / "failures.jsonl").read_text().splitlines()]
    skipped_kinds = {k for k in placed if k in BAD_IMAGE_REASONS}
    assert {Path(f["id"]).stem for f in failures} == skipped_kinds
    for failure in failures:
        kind = Path(failure["id"]).stem
        assert BAD_IMAGE_REASONS[kind] in failure["reason"] and failure["stage"] == "image"
    predicted = {Path(r["id"]).stem for r in rows}
    assert set(CONVERTIBLE_KINDS) <= predicted  # converted to RGB and classified
    n_files = sum(1 for p in root.rglob("*") if p.is_file())
    assert len(rows) + len(failures) == n_files  # no row lost
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_skipped"] == len(skipped_kinds)


def write_manifest(tmp_path: Path, rows: list[dict], name="manifest.csv") -> Path:
    import csv

    path = tmp_path / name
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def good_rows(tmp_path: Path, n=4) -> list[dict]:
    rows = []
    for c, colour in zip(CLASSES, [(200, 0, 0), (0, 200, 0), (0, 0, 200)], strict=True):
        for i in range(n):
            good_image(tmp_path / "imgs" / f"{c}_{i}.png", colour)
            rows.append({"image": f"imgs/{c}_{i}.png", "label": c})
    return rows


def test_manifest_with_missing_file_and_unknown_label_skips_and_counts(tmp_path, tiny_idefics3_dir):
    good_image(tmp_path / "imgs" / "hex.png", (90, 90, 90))
    rows = good_rows(tmp_path) + [{"image": "imgs/nowhere.png", "label": "circle"},
                                  {"image": "imgs/hex.png", "label": "hexagon"}]
    manifest = write_manifest(tmp_path, rows)
    result = invoke("evaluate", config(tmp_path, tiny_idefics3_dir, manifest, kind="manifest"), "--split", "all")
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    failures = (run / "failures.jsonl").read_text()
    assert "nowhere.png" in failures and "missing" in failures
    assert "hexagon" in failures
    assert json.loads((run / "metrics.json").read_text())["n"] == 12


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing_label_column", "label"),
        ("duplicate_ids", "appears twice"),
    ],
)
def test_manifest_that_cannot_run_exits_2_naming_the_problem(case, expected, tmp_path, tiny_idefics3_dir):
    rows = good_rows(tmp_path)
    extra = {}
    if case == "missing_label_column":
        rows = [{"image": r["image"], "note": r["label"]} for r in rows]
        extra = {"label_column": "label"}
    else:
        rows = [{**r, "id": "same" if i < 2 else str(i)} for i, r in enumerate(rows)]
        extra = {"id_column": "id"}
    manifest = write_manifest(tmp_path, rows)
    result = invoke("evaluate", config(tmp_path, tiny_idefics3_dir, manifest, kind="manifest", **extra))
    assert result.exit_code == 2
    assert expected in result.output.lower() and "error" in result.output.lower()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dataset: {source: x, n_sample: 3}\n", "did you mean 'n_samples'"),
        ("dataset: {source: x, n_samples: lots}\n", "dataset.n_samples"),
        ("dataset: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
        (None, "config file not found"),
    ],
    ids=["unknown_key", "wrong_type", "object_tag", "missing_file"],
)
def test_bad_yaml_exits_2_with_the_fix(text, expected, tmp_path):
    path = tmp_path / "task.yaml"
    if text is not None:
        path.write_text(text)
    result = invoke("evaluate", path)
    assert result.exit_code == 2 and expected in " ".join(result.output.split())
