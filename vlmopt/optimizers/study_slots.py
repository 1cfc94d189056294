"""Sharing one study between workers: N trials in total, no settings run twice.

Optuna's ``MaxTrialsCallback`` stops a worker once N trials are complete, but workers that were
already mid-trial finish theirs, so N workers overshoot by up to N-1 — each an expensive MIPROv2
run. And a sampler may propose settings another worker is already running. Both are settled
inside the trial, through the shared storage, before any model call:

* **duplicates** — a trial whose settings equal a complete trial's, or a running trial's that
  goes first (admitted, or numbered lower), is pruned at once (``duplicate_of`` names it);
* **slots** — a trial runs only if complete + running-ahead trials leave room under N. Otherwise
  it waits (its heartbeat keeps beating) until a slot frees — a running trial failed, or its
  worker died and the heartbeat check failed it — or until N are complete, when it is pruned as
  surplus. "Running ahead" means admitted, or numbered lower and still deciding; so of two trials
  deciding at once the lower one wins, and two waiting trials never wait for each other.

Pruned trials cost no model call and do not count towards N.
"""

from __future__ import annotations

import time
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

ADMITTED_ATTR = "admitted"  # holds the trial's own number: a retry copies user attrs, not admission


def _admitted(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(ADMITTED_ATTR) == trial.number


def _ahead(other: FrozenTrial, number: int) -> bool:
    """A running trial that goes before trial ``number``."""
    return other.state == TrialState.RUNNING and other.number != number and (_admitted(other) or other.number < number)


def duplicate_of(trial: optuna.Trial) -> int | None:
    """The number of a complete or running-ahead trial with the same settings, if any."""
    for other in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
        if other.params == trial.params and (other.state == TrialState.COMPLETE or _ahead(other, trial.number)):
            return other.number
    return None


def take_slot(trial: optuna.Trial, n_trials: int, poll_interval_s: float) -> bool:
    """Wait for room under ``n_trials``; True once admitted, False when the study is full (surplus)."""
    study = trial.study
    while True:
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        if complete >= n_trials:
            return False
        if complete + sum(_ahead(t, trial.number) for t in trials) < n_trials:
            trial.set_user_attr(ADMITTED_ATTR, trial.number)
            return True
        time.sleep(poll_interval_s)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial frees its slot
