"""One budget for every method, in task-model calls, mapped onto each DSPy optimizer's own knob.

MIPROv2 counts trials, GEPA metric calls, SIMBA steps, random search candidate programs; a call
of the task model (one image, one answer) is what they all spend, so ``optimizer.budget_calls``
is stated in those and translated here, each formula the method's own accounting:

* **MIPROv2** — one full val evaluation of the default program, then trials of ``minibatch_size``
  (or the whole val set without minibatching): ``num_trials = (budget - n_val) / per_trial``;
* **GEPA** — ``max_metric_calls`` is already program calls: the budget itself;
* **SIMBA** — a step samples ``bsize x num_candidates`` trajectories and scores up to
  ``num_candidates + 1`` new programs on the same batch; the end scores ``num_candidates + 1``
  programs on train and (vlmopt's selection) on val: ``max_steps = (budget - end) / per_step``;
* **random search** — a candidate program costs one val evaluation plus at most one pass over
  train to bootstrap its demos; DSPy always adds three fixed candidates (zero-shot, labelled
  demos, unshuffled bootstrap): ``num_candidate_programs = budget / (n_val + n_train) - 3``.

A budget too small for one step of a method still runs one (the minimum), and the mapping says
so; the calls actually made are counted at the LM edge and reported beside the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

DSPY_SIMBA_CANDIDATES = 6  # SIMBA's num_candidates default
DSPY_RANDOM_SEARCH_CANDIDATES = 16  # BootstrapFewShotWithRandomSearch's num_candidate_programs default
RANDOM_SEARCH_FIXED = 3  # zero-shot, labelled-only, unshuffled bootstrap (seeds -3, -2, -1)


@dataclass(frozen=True)
class Knob:
    """A method's own budget knob, the value given, and the calls it should spend (an estimate)."""

    name: str
    value: int
    expected_calls: int

    def describe(self, budget: int | None) -> str:
        given = f"budget {budget} calls -> " if budget is not None else "default budget: "
        return f"{given}{self.name}={self.value} (about {self.expected_calls} task-model calls)"


def mipro_trials(budget: int, n_val: int, per_trial: int) -> Knob:
    trials = max(1, (budget - n_val) // max(1, per_trial))
    return Knob("num_trials", trials, n_val + trials * per_trial)


def gepa_metric_calls(budget: int) -> Knob:
    return Knob("max_metric_calls", budget, budget)


def simba_steps(budget: int | None, *, default: int, bsize: int, num_candidates: int, n_train: int, n_val: int) -> Knob:
    per_step = bsize * num_candidates + (num_candidates + 1) * bsize
    end = (num_candidates + 1) * (n_train + n_val)
    steps = default if budget is None else max(1, (budget - end) // per_step)
    return Knob("max_steps", steps, steps * per_step + end)


def random_search_candidates(budget: int | None, *, default: int, n_train: int, n_val: int) -> Knob:
    per_candidate = n_val + n_train
    n = default if budget is None else max(0, budget // per_candidate - RANDOM_SEARCH_FIXED)
    return Knob("num_candidate_programs", n, (n + RANDOM_SEARCH_FIXED) * per_candidate)
