"""Worker processes and study checks shared by the SQLite and PostgreSQL study tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

WORKER = Path(__file__).with_name("study_worker.py")


def start_worker(data: Path, workdir: Path, storage: str, study_name: str, n_trials: int, *extra: str):
    """``tests/study_worker.py`` as its own process (see there for the flags)."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(data), str(workdir), "--storage", storage, "--study-name", study_name,
         "--n-trials", str(n_trials), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 150) -> dict:
    """Wait for a worker; its JSON line (pid, the complete trials it ran, its run directory)."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def wait_for(study_name: str, url: str, condition, timeout: float = 90) -> optuna.Study:
    """Poll the storage until ``condition(study)`` holds (one connection pool, not one per poll)."""
    storage = optuna.storages.RDBStorage(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            if condition(study):
                return study
        except KeyError:  # no worker has created the study yet
            pass
        time.sleep(0.1)
    raise AssertionError(f"study {study_name} never reached the expected state")


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE,))


def admitted_running(study: optuna.Study) -> list[FrozenTrial]:
    """Running trials past their slot check: mid-MIPROv2."""
    return [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.user_attrs.get("admitted") == t.number]


def assert_no_settings_twice(study: optuna.Study) -> None:
    settings = [json.dumps(t.params, sort_keys=True) for t in complete(study)]
    assert len(settings) == len(set(settings))
