"""`vlmopt optimize` killed with SIGKILL mid-way: the rerun replays the finished calls from the cache.

Counted, not assumed: the CLI prints how many calls reached the model. A rerun after the kill
makes fewer calls than the same optimize from an empty cache, and a rerun after that makes none.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from vlmopt.testing.images import make_image_dataset


def calls_of(output: str) -> int:
    return int(re.search(r"model calls this run: (\d+)", output).group(1))


@pytest.mark.slow
def test_sigkilled_optimize_reruns_from_the_cache(tmp_path, tiny_idefics3_dir):
    data = make_image_dataset(tmp_path / "data", n_per_class=10, seed=9)

    def write(name: str) -> str:
        cfg = {
            "name": name,
            "model": {"id": str(tiny_idefics3_dir), "max_new_tokens": 16},
            "dataset": {"source": str(data.folder), "kind": "imagefolder", "max_image_side": 64},
            "task": {"labels": list(data.classes), "system_prompt": "Shapes.", "user_prompt": "Which shape?"},
            "optimizer": {"auto": None, "num_candidates": 2, "num_trials": 3, "max_bootstrapped_demos": 1,
                          "max_labeled_demos": 1, "minibatch": False, "prompt_model": "none",
                          "instructions": ["Name the shape."]},
            "run": {"output_dir": str(tmp_path / name / "runs"), "cache_dir": str(tmp_path / name / "cache"),
                    "num_threads": 1},
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    env = {**os.environ, "COLUMNS": "200"}
    command = [sys.executable, "-m", "vlmopt.cli", "optimize"]
    fresh = subprocess.run([*command, write("fresh")], capture_output=True, text=True, env=env, timeout=600)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    full_calls = calls_of(fresh.stdout)

    killed_cfg = write("killed")
    proc = subprocess.Popen([*command, killed_cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        rows = list((tmp_path / "killed" / "runs").glob("*/baseline/predictions.jsonl"))
        if rows and len(rows[0].read_text().splitlines()) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    rerun = subprocess.run([*command, killed_cfg], capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert 0 < calls_of(rerun.stdout) < full_calls
    again = subprocess.run([*command, killed_cfg], capture_output=True, text=True, env=env, timeout=600)
    assert calls_of(again.stdout) == 0
