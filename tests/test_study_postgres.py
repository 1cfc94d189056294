"""Several worker processes share one study on a real PostgreSQL server; one is killed mid-trial.

The server comes from ``$VLMOPT_TEST_POSTGRES_URL`` (CI: ``export VLMOPT_TEST_POSTGRES_URL=
"$(scripts/start_postgres.sh)"``), else this test starts it with that script (idempotent). Where
PostgreSQL cannot be started the test skips, saying why — except under CI (``$CI`` set), where
that fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from study_procs import admitted_running, assert_no_settings_twice, complete, finish, start_worker, wait_for
from study_task import make_colour_folder

START_SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "start_postgres.sh"


def _unavailable(reason: str):
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the PostgreSQL study test: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("VLMOPT_TEST_POSTGRES_URL")
    if not url:
        try:
            started = subprocess.run([str(START_SCRIPT)], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"scripts/start_postgres.sh could not run: {exc}")
        if started.returncode != 0:
            _unavailable(f"scripts/start_postgres.sh failed: {started.stderr.strip()[-500:]}")
        url = started.stdout.strip().splitlines()[-1]
    try:
        with sqlalchemy.create_engine(url).connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any connection failure is a reason to say
        _unavailable(f"cannot connect to {url}: {exc}")
    return url


@pytest.mark.slow
def test_three_workers_share_a_postgres_study_and_survive_one_killed_mid_trial(postgres_url, tmp_path):
    data = make_colour_folder(tmp_path / "data")
    name = f"colours-{uuid.uuid4().hex[:8]}"
    n_trials = 5
    procs = {}
    for _ in range(3):
        proc = start_worker(data, tmp_path, postgres_url, name, n_trials, "--call-delay", "0.01")
        procs[proc.pid] = proc
    pids = set(procs)
    try:
        study = wait_for(name, postgres_url, lambda s: complete(s) and admitted_running(s))
        victim = admitted_running(study)[0]
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        procs.pop(pid).wait()
        outs = [finish(p) for p in procs.values()]

        study = optuna.load_study(study_name=name, storage=postgres_url)
        ran_by = {t.number: int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in complete(study)}
        assert len(ran_by) == n_trials  # none lost, none extra
        assert set(ran_by.values()) <= pids
        for out in outs:
            assert set(out["complete"]) == {n for n, p in ran_by.items() if p == out["pid"]}
        assert_no_settings_twice(study)
        assert study.trials[victim.number].state == TrialState.FAIL  # the heartbeat noticed; not RUNNING forever
        assert not study.get_trials(states=(TrialState.RUNNING,))
        assert any(t.system_attrs.get("failed_trial") == victim.number for t in study.trials)  # queued again
    finally:
        for proc in procs.values():
            proc.kill()
        optuna.delete_study(study_name=name, storage=postgres_url)
