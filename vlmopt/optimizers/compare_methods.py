"""``optimize --compare mipro,gepa,simba,random_search``: every method on the same splits, one winner.

Which optimizer wins depends on the model and the task, so each method named in
``optimizer.compare`` runs its whole search on the same train/val split (the same program, demo
pool, metric, writing model and ``budget_calls``), its program is scored on val, and the best
on val (the first named among equals) becomes the artifact. Each method's calls (asked, and
reached a model) and wall time are counted around its search. The test split is touched once per
method, after the choice, for the comparison table only (:func:`score_on_test`).

DSPy's cache is shared: a call one method already made replays for the next at no model cost,
which the "reached" count shows and the "asked" count (the budget's unit) does not hide.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import dspy
from rich.console import Console

from vlmopt.config import TaskConfig
from vlmopt.datasets import LoadedSplits
from vlmopt.evaluate import EvalOutcome, SplitInfo, evaluate_program
from vlmopt.optimizers.call_count import counting_calls
from vlmopt.optimizers.prompt_model import PromptModel
from vlmopt.optimizers.search import Winner, search_program
from vlmopt.reports.run_dir import RunDir


@dataclass
class MethodRun:
    """One method's search in a comparison: its winner, its val (and later test) outcome, its cost."""

    name: str
    winner: Winner
    val: EvalOutcome
    calls: dict[str, Any]
    test: EvalOutcome | None = None


def search_or_compare(
    cfg: TaskConfig,
    splits: LoadedSplits,
    lm: dspy.LM,
    methods: list[str],
    *,
    run: RunDir,
    prompt_lm: dspy.LM | None = None,
    lm_factory=None,
    console: Console | None = None,
) -> tuple[Winner, dict[str, MethodRun]]:
    """Each of ``methods`` when ``optimizer.compare`` names search methods, the best on val winning (test is not
    touched here); else the one search (and no runs)."""
    if not any(m in methods for m in cfg.optimizer.compare):
        return search_program(cfg, splits, lm, run=run, prompt_lm=prompt_lm, lm_factory=lm_factory, console=console), {}
    prompt = PromptModel.resolve(cfg, prompt_lm)  # one writer for every method, loaded once
    runs: dict[str, MethodRun] = {}
    for name in methods:
        method_cfg = cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"method": name})})
        with counting_calls(lm, prompt.lm) as calls:
            winner = search_program(
                method_cfg,
                splits,
                lm,
                run=run,
                prompt_lm=prompt.lm,
                lm_factory=lm_factory,
                console=console,
                prompt=prompt,
                study_name=f"{cfg.name or 'run'}-{name}-search",  # with --search, one outer study per method
            )
        val = evaluate_program(
            winner.program,
            winner.splits.val,
            lm=winner.lm,
            task=winner.cfg.task,
            labels=splits.labels,
            num_threads=cfg.run.num_threads,
            seed=cfg.seed,
            console=console,
            description=f"{name} val",
            split=SplitInfo.of("val", splits),
        )
        runs[name] = MethodRun(name, winner, val, calls.summary(cfg.optimizer.budget_calls))
        if console is not None:
            console.print(
                f"{name}: val accuracy {val.metrics['accuracy']:.3f}, {runs[name].calls['asked']} calls "
                f"asked, {runs[name].calls['wall_s']:.1f} s",
                highlight=False,
            )
    best = max(runs.values(), key=lambda r: (r.val.metrics["accuracy"], -methods.index(r.name)))
    notes = [
        f"compare: {best.name} wins on val ({best.val.metrics['accuracy']:.3f}; "
        + ", ".join(f"{r.name} {r.val.metrics['accuracy']:.3f}" for r in runs.values())
        + ")"
    ]
    chosen = dataclasses.replace(best.winner, notes=[*best.winner.notes, *notes])
    for r in runs.values():
        if r is not best:
            chosen.notes.extend(f"{r.name}: {note}" for note in r.winner.notes)
    return chosen, runs


def score_on_test(
    runs: dict[str, MethodRun],
    winner_name: str,
    winner_test: EvalOutcome,
    splits: LoadedSplits,
    console: Console | None = None,
) -> None:
    """Each method's program on test, once, after the choice; the winner's is the run's own test outcome."""
    for name, method_run in runs.items():
        if name == winner_name:
            method_run.test = winner_test
            continue
        w = method_run.winner
        method_run.test = evaluate_program(
            w.program,
            w.splits.test,
            lm=w.lm,
            task=w.cfg.task,
            labels=splits.labels,
            num_threads=w.cfg.run.num_threads,
            seed=w.cfg.seed,
            console=console,
            description=f"{name} test",
            split=SplitInfo.of("test", splits),
        )


def comparison_record(runs: dict[str, MethodRun], winner_name: str, baseline_test: EvalOutcome) -> dict[str, Any]:
    """``comparison.json``: per method its val and test figures, calls and wall time; the baseline; the winner."""
    keys = ("n", "accuracy", "accuracy_ci", "macro_f1", "invalid_rate")

    def figures(outcome: EvalOutcome | None) -> dict[str, Any] | None:
        return None if outcome is None else {k: outcome.metrics.get(k) for k in keys}

    return {
        "winner": winner_name,
        "selected_on": "val",
        "baseline": {"test": figures(baseline_test)},
        "methods": {
            name: {
                "val": figures(r.val),
                "test": figures(r.test),
                "calls": r.calls,
                "instruction": r.winner.program.predictors()[0].signature.instructions,
            }
            for name, r in runs.items()
        },
    }
