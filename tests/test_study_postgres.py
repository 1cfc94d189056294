"""Several worker processes share one study on a real PostgreSQL server; one is killed mid-trial.

The server comes from ``$VLMOPT_TEST_POSTGRES_URL`` (CI: ``export VLMOPT_TEST_POSTGRES_URL=
"$(scripts/start_postgres.sh)"``), else this test starts it with that script (idempotent). Where
PostgreSQL cannot be started the test skips, saying why — except under CI (``$CI`` set), where
that fails.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from study_procs import assert_no_settings_twice, complete, finish, kill_mid_trial, start_workers
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


@pytest.fixture
def empty_database(postgres_url):
    """A fresh database per test: workers starting together must also create Optuna's tables."""
    server = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    name = f"vlmopt_study_{uuid.uuid4().hex[:8]}"
    with server.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    yield sqlalchemy.engine.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    with server.connect() as conn:
        conn.execute(sqlalchemy.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    server.dispose()


@pytest.mark.slow
def test_three_workers_share_a_postgres_study_and_survive_one_killed_mid_trial(empty_database, tmp_path):
    postgres_url = empty_database
    data = make_colour_folder(tmp_path / "data")
    name = "colours"
    n_trials = 5
    procs = start_workers(3, data, tmp_path, postgres_url, name, n_trials, "--call-delay", "0.01")
    pids = {p.pid for p in procs}
    try:
        killed, victim = kill_mid_trial(procs, name, postgres_url, min_complete=1)
        outs = [finish(p) for p in procs if p is not killed]

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
        for proc in procs:
            proc.kill()
