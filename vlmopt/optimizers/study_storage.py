"""Where the outer study lives: an Optuna RDB storage with heartbeats, shared by name.

* **URL.** Any SQLAlchemy URL: SQLite in the run directory by default
  (``sqlite:///runs/<run>/study.db``), PostgreSQL (``postgresql+psycopg://user@host/db``) when
  several ``vlmopt optimize --worker`` processes, on one machine or many, share one study.
* **Resume.** The study is opened by a fixed name with ``load_if_exists``; finished trials are
  kept, a rerun adds to them.
* **Dead workers.** Each running trial beats every ``heartbeat_interval`` seconds; a trial silent
  for ``grace_period`` seconds (its worker was killed) is failed by the next worker that looks,
  and Optuna's ``RetryHeartbeatStaleTrialCallback`` queues its settings again.
* **Same task.** The study remembers a fingerprint of the config parts that define the task and
  the search; a worker with a different config gets a clear error instead of mixing results.

The study opens in optuna-dashboard (``pip install optuna-dashboard``)::

    optuna-dashboard sqlite:///runs/<run>/study.db
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from vlmopt.config import ConfigError, TaskConfig

FINGERPRINT_ATTR = "vlmopt_fingerprint"
STUDY_DB = "study.db"
OPEN_ATTEMPTS = 4  # opening a fresh PostgreSQL storage that other workers are creating at the same moment


class StudyMismatch(ConfigError):
    """The named study exists in the storage but was made for another task or search."""


@dataclass(frozen=True)
class Heartbeat:
    """How dead workers are noticed: beat interval, silence allowed, retries of a dead worker's trial.

    ``poll_interval`` is how often a worker waiting for a free trial slot looks again.
    """

    interval_s: int = 30
    grace_period_s: int = 120
    max_retry: int = 2
    poll_interval_s: float = 5.0


def default_storage_url(run_path: str | Path) -> str:
    return f"sqlite:///{Path(run_path).resolve() / STUDY_DB}"


def display_url(url: str) -> str:
    """The URL with any password masked, for logs, run files and reports."""
    return make_url(url).render_as_string(hide_password=True)


def open_storage(url: str, heartbeat: Heartbeat) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats and retries of heartbeat-stale trials.

    Workers started together on an empty PostgreSQL database race to create Optuna's tables
    (optuna/optuna#4621: a loser gets a unique violation); a loser opens it again once the
    winner's tables exist (a few tries: with several workers one can lose more than once).
    """
    for _ in range(OPEN_ATTEMPTS - 1):
        try:
            return _rdb_storage(url, heartbeat)
        except DBAPIError:
            time.sleep(1.0)
    return _rdb_storage(url, heartbeat)


def _rdb_storage(url: str, heartbeat: Heartbeat) -> optuna.storages.RDBStorage:
    engine_kwargs: dict[str, Any] = {}
    if make_url(url).get_backend_name() == "sqlite":
        # Several worker processes write one file: wait for the lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat.interval_s,
            grace_period=heartbeat.grace_period_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=heartbeat.max_retry
            ),
        )


def study_fingerprint(cfg: TaskConfig, split_fingerprint: str, space: dict[str, Any], objectives: list[str]) -> str:
    """sha256 over what makes two workers' trials comparable.

    Left out on purpose: the run name and directories, the backend (each worker may have its own
    server), the device, the dataset's local path (the split fingerprint names the items), thread
    counts and the outer trial count and storage.
    """
    model = cfg.model.model_dump(exclude={"device"})
    optimizer = cfg.optimizer.model_dump(exclude={"search_trials", "storage"})
    parts = {
        "model": model,
        "dataset": cfg.dataset.model_dump(exclude={"source"}),
        "task": cfg.task.model_dump(),
        "optimizer": optimizer,
        "seed": cfg.seed,
        "split": split_fingerprint,
        "space": space,
        "objectives": objectives,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def open_study(
    storage: optuna.storages.RDBStorage,
    study_name: str,
    *,
    directions: list[str],
    fingerprint: str,
) -> optuna.Study:
    """Create or load the named study; refuse one made for another task or search."""
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    where = f"study '{study_name}' in {display_url(storage.url)}"
    if [d.name.lower() for d in study.directions] != directions:
        raise StudyMismatch(
            f"{where} optimizes {[d.name.lower() for d in study.directions]}, not {directions}; "
            "use another study name or the same objectives"
        )
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, fingerprint)
    elif stored != fingerprint:
        raise StudyMismatch(
            f"{where} was made for a different task, dataset split or search space "
            f"(fingerprint {stored[:12]}, this config {fingerprint[:12]}); "
            "use another study name, or the config the study was started with"
        )
    return study
