"""A full or read-only disk under the run directory is a clear error before any model work starts."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from vlmopt.cli import app


@pytest.fixture
def small_mount(tmp_path):
    """A 64 KiB tmpfs (mount needs root: CI runs as root; elsewhere the test says why it skips)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(*options: str) -> Path:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(("size=64k", *options)), "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); CI runs this as root")
        return mnt

    yield mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def run_evaluate(tmp_path: Path, output_dir: Path):
    cfg = {"model": {"id": "never/loaded"}, "dataset": {"source": str(tmp_path / "no-data")},
           "task": {"labels": ["a", "b"]}, "run": {"output_dir": str(output_dir)}}
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return CliRunner().invoke(app, ["evaluate", str(path)], catch_exceptions=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_full_disk_is_refused_before_work(tmp_path, small_mount):
    mnt = small_mount()
    with open(mnt / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    result = run_evaluate(tmp_path, mnt / "runs")
    assert result.exit_code == 2
    said = " ".join(result.output.split())
    assert "cannot write the run directory" in said and "No space left" in said and "run.output_dir" in said
    assert "no-data" not in said  # failed before the dataset (or the model) was touched


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")
def test_read_only_disk_is_refused_before_work(tmp_path, small_mount):
    mnt = small_mount("ro")
    result = run_evaluate(tmp_path, mnt / "runs")
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Read-only file system" in said and "no-data" not in said
