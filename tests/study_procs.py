"""Worker processes and study checks shared by the SQLite and PostgreSQL study tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.exc import DBAPIError, OperationalError

WORKER = Path(__file__).with_name("study_worker.py")


def start_workers(n: int, data: Path, workdir: Path, storage: str, study_name: str, n_trials: int,
                  *extra: str, timeout: float = 120) -> list[subprocess.Popen]:
    """``n`` workers that start searching together, once all have imported and loaded the data."""
    go = workdir / "go"
    procs = [start_worker(data, workdir, storage, study_name, n_trials, "--go-file", str(go), *extra) for _ in range(n)]
    deadline = time.monotonic() + timeout
    while not all(Path(f"{go}.ready-{p.pid}").exists() for p in procs):
        assert time.monotonic() < deadline, "the workers never got ready"
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    return procs


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


def kill_mid_trial(procs: list[subprocess.Popen], study_name: str, url: str, min_complete: int,
                   timeout: float = 120) -> tuple[subprocess.Popen, FrozenTrial]:
    """SIGKILL one worker while it is inside an admitted trial; (that worker, that trial).

    Once ``min_complete`` trials are complete and a worker is mid-trial, it is frozen (SIGSTOP)
    before the storage is read again, so its trial cannot finish between the look and the kill.
    """
    storage = None
    by_pid = {p.pid: p for p in procs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            # the workers create Optuna's tables; this reader only looks (creating them too would race them)
            storage = storage or optuna.storages.RDBStorage(url, skip_table_creation=True)
            study = optuna.load_study(study_name=study_name, storage=storage)
            candidates = [t for t in admitted_running(study) if _pid(t) in by_pid]
            if len(complete(study)) < min_complete or not candidates:
                continue
        except (KeyError, DBAPIError, optuna.exceptions.StorageInternalError):  # no study (or tables) yet
            continue
        victim = by_pid[_pid(candidates[0])]
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            mine = [t for t in admitted_running(study) if _pid(t) == victim.pid]
        except (OperationalError, optuna.exceptions.StorageInternalError):  # frozen holding SQLite's write lock
            mine = []
        if mine:
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
            return victim, mine[0]
        os.kill(victim.pid, signal.SIGCONT)
    raise AssertionError(f"no worker of study {study_name} was caught mid-trial")


def _pid(trial: FrozenTrial) -> int | None:
    worker = trial.user_attrs.get("worker")
    return int(worker.rsplit(":", 1)[1]) if worker else None


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(states=(TrialState.COMPLETE,))


def admitted_running(study: optuna.Study) -> list[FrozenTrial]:
    """Running trials past their slot check: mid-MIPROv2."""
    return [t for t in study.get_trials(states=(TrialState.RUNNING,)) if t.user_attrs.get("admitted") == t.number]


def assert_no_settings_twice(study: optuna.Study) -> None:
    settings = [json.dumps(t.params, sort_keys=True) for t in complete(study)]
    assert len(settings) == len(set(settings))
