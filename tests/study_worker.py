"""One search worker process over the scripted colour task, for the multi-process study tests.

It is ``run_search(worker=True)`` with the scripted test double as the task model (see
``study_task``), so tests can run several real worker processes against one storage, and kill
them. Not a user entry point: ``vlmopt optimize --worker`` is.

    python tests/study_worker.py DATA WORKDIR --storage URL --study-name NAME --n-trials 6 \
        [--objectives accuracy tokens] [--call-delay 0.05] [--heartbeat 1 --grace 5 --poll 0.2] [--go-file F]

With ``--go-file F`` it writes ``F.ready-<pid>`` once set up and waits for ``F`` before searching,
so several workers really run at the same time whatever their start-up time.

Prints one JSON line at the end: the numbers of the complete trials this worker ran.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import optuna

from study_task import StudyVLM, study_config
from vlmopt.optimizers.study import run_search
from vlmopt.optimizers.study_storage import Heartbeat
from vlmopt.pipeline import configure_cache
from vlmopt.reports.run_dir import RunDir
from vlmopt.testing.scripted_engine import ScriptedEngine, scripted_lm


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--storage", required=True)
    parser.add_argument("--study-name", required=True)
    parser.add_argument("--n-trials", type=int, required=True)
    parser.add_argument("--objectives", nargs="+", default=["accuracy"])
    parser.add_argument("--call-delay", type=float, default=0.0)
    parser.add_argument("--heartbeat", type=int, default=1)
    # Optuna keeps SQLite heartbeats to the second: a 1 s beat needs a few seconds' grace under load
    parser.add_argument("--grace", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--go-file", type=Path)
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("dspy").setLevel(logging.WARNING)
    cfg = study_config(args.data, args.workdir)
    configure_cache(cfg)
    engine = ScriptedEngine(StudyVLM(delay_s=args.call_delay))
    run = RunDir.create(args.workdir / f"runs-{os.getpid()}", "worker")
    if args.go_file is not None:
        Path(f"{args.go_file}.ready-{os.getpid()}").touch()
        while not args.go_file.exists():
            time.sleep(0.05)
    result = run_search(
        cfg,
        run=run,
        n_trials=args.n_trials,
        storage=args.storage,
        study_name=args.study_name,
        lm_factory=lambda _cfg: scripted_lm(engine, name="study", cache=True),
        worker=True,
        objectives=args.objectives,
        heartbeat=Heartbeat(interval_s=args.heartbeat, grace_period_s=args.grace, poll_interval_s=args.poll),
    )
    mine = [t.number for t in result.trials if t.user_attrs.get("worker", "").endswith(f":{os.getpid()}")]
    print(json.dumps({"pid": os.getpid(), "complete": mine, "run": str(run.path)}), flush=True)


if __name__ == "__main__":
    main()
