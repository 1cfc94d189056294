"""Ctrl-C mid-evaluate keeps every finished row, and the rerun makes no repeated model calls."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from vlmopt.testing.images import make_image_dataset


@pytest.mark.slow
def test_sigint_keeps_finished_rows_and_rerun_replays_them(tmp_path, tiny_idefics3_dir):
    data = make_image_dataset(tmp_path / "data", n_per_class=40, size=64, seed=5)
    cfg = {
        "name": "interrupt",
        "model": {"id": str(tiny_idefics3_dir), "max_new_tokens": 16},
        "dataset": {"source": str(data.folder), "kind": "imagefolder", "max_image_side": 64},
        "task": {"labels": list(data.classes), "system_prompt": "Shapes.", "user_prompt": "Which shape?"},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 1},
    }
    path = tmp_path / "task.yaml"
    path.write_text(yaml.safe_dump(cfg))
    command = [sys.executable, "-m", "vlmopt.cli", "evaluate", str(path), "--split", "test"]
    env = {**os.environ, "COLUMNS": "200"}

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 120
    rows_file = None
    while time.monotonic() < deadline:
        found = list((tmp_path / "runs").glob("*/predictions.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 5:
            rows_file = found[0]
            break
        time.sleep(0.05)
    assert rows_file is not None, "the run never wrote 5 rows"
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, output
    assert "interrupted" in output and "Traceback" not in output
    kept = [json.loads(line) for line in rows_file.read_text().splitlines()]
    n_test = 48
    assert 5 <= len(kept) < n_test
    assert len({row["id"] for row in kept}) == len(kept)

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    calls = int(re.search(r"model calls: (\d+)", again.stdout).group(1))
    assert calls <= n_test - len(kept)
    (rerun_dir,) = [p for p in (tmp_path / "runs").iterdir() if p != rows_file.parent]
    rerun_lines = (rerun_dir / "predictions.jsonl").read_text().splitlines()
    rerun_rows = {json.loads(line)["id"]: json.loads(line) for line in rerun_lines}
    assert len(rerun_rows) == n_test
    for row in kept:
        assert rerun_rows[row["id"]]["predicted"] == row["predicted"]
