"""Task-level jobs the CLI and notebooks call: config in, run directory out.

The CLI is thin glue over these functions; each one is usable from a notebook too.

Example::

    run, outcome = evaluate_task(load_config("configs/cats_vs_dogs.yaml"), split="test", limit=20)
    print(run.path, outcome.metrics["accuracy"])
"""

from __future__ import annotations

import functools
import hashlib
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dspy
from rich.console import Console

from vlmopt.artifacts import check_backend, load_artifact, read_verified, save_artifact
from vlmopt.config import OptimizerConfig, TaskConfig
from vlmopt.datasets import LoadedSplits, load_splits
from vlmopt.evaluate import EvalOutcome, evaluate_program
from vlmopt.metrics import metric_for, plot_confusion_matrix
from vlmopt.optimizers.context_budget import max_demos_that_fit
from vlmopt.optimizers.mipro import compile_comparison, demo_effect, run_mipro
from vlmopt.optimizers.reanchor import Calibration, calibrate_decision, calibration_summary
from vlmopt.optimizers.study import run_search, shared_lm_factory
from vlmopt.optimizers.trial_program import demo_trainset, rebuild_trial
from vlmopt.programs import create_program
from vlmopt.reports.html import write_report
from vlmopt.reports.run_dir import METRICS, RunDir
from vlmopt.serving.factory import close_lm, create_lm, create_prompt_lm, model_calls

SplitName = Literal["train", "val", "test", "all"]


def configure_cache(cfg: TaskConfig) -> Path:
    """Put DSPy's disk cache under the project, so reruns replay finished model calls."""
    cache_dir = Path(cfg.run.cache_dir).resolve()
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(cache_dir))
    return cache_dir


_CREATED_LMS: ContextVar[ExitStack] = ContextVar("vlmopt_pipeline_created_lms")


def _closes_the_lms_it_creates(job):
    """Decorates a task job: every LM the job builds is closed when it returns or fails.

    An in-process engine holds the weights and a worker thread until closed; an LM the caller
    passed in is the caller's, and stays open.
    """
    @functools.wraps(job)
    def run(*args, **kwargs):
        with ExitStack() as created:
            token = _CREATED_LMS.set(created)
            try:
                return job(*args, **kwargs)
            finally:
                _CREATED_LMS.reset(token)

    return run


def _created(lm: dspy.LM) -> dspy.LM:
    """``lm``, built by the running job: closed when the job ends."""
    _CREATED_LMS.get().callback(close_lm, lm)
    return lm


def _start_run(cfg: TaskConfig, lm: dspy.LM | None) -> tuple[RunDir, LoadedSplits, dspy.LM, int | None]:
    """Run directory first (an unwritable one fails before any work), then data, then the model."""
    run = RunDir.create(cfg.run.output_dir, cfg.name or "run")
    run.write_config(cfg)
    configure_cache(cfg)
    splits = load_splits(cfg)
    for skip in splits.skipped:
        run.append_failure(skip.id, "image", f"{skip.reason}: {skip.message}")
    lm = lm or _created(create_lm(cfg))
    return run, splits, lm, model_calls(lm)


@_closes_the_lms_it_creates
def evaluate_task(
    cfg: TaskConfig,
    *,
    split: SplitName = "test",
    limit: int | None = None,
    num_threads: int | None = None,
    lm: dspy.LM | None = None,
    artifact: str | Path | None = None,
    console: Console | None = None,
) -> tuple[RunDir, EvalOutcome]:
    """Evaluate the config's own prompt — or a frozen ``artifact`` — on a split; write a run directory."""
    run, splits, lm, calls_before = _start_run(cfg, lm)
    examples = splits.all if split == "all" else getattr(splits, split)
    examples = examples[:limit] if limit else examples
    if artifact is not None:
        frozen = load_artifact(artifact, expected_labels=splits.labels if cfg.task.output != "multi_field" else None)
        check_backend(frozen, cfg)
        program, task = frozen.program, frozen.task
    else:
        program, task = create_program(cfg.task, splits.labels), cfg.task
    outcome = evaluate_program(
        program,
        examples,
        lm=lm,
        task=task,
        labels=splits.labels,
        run=run,
        num_threads=num_threads or cfg.run.num_threads,
        seed=cfg.seed,
        console=console,
        description=f"evaluate {split}",
    )
    outcome.metrics.update(split=split, n_skipped=len(splits.skipped), split_sizes=splits.sizes())
    outcome.model_calls = _calls_since(lm, calls_before)
    _finish_run(run, outcome.metrics)
    return run, outcome


def _finish_run(run: RunDir, metrics: dict[str, Any]) -> None:
    """Last files of every run: ``metrics.json``, the confusion-matrix plot and ``report.html``."""
    run.write_json(METRICS, metrics)
    if "confusion" in metrics:
        plot_confusion_matrix(metrics["confusion"], run.path / "confusion.png")
    write_report(run.path)


@dataclass
class OptimizeOutcome:
    run: RunDir
    baseline: dict[str, EvalOutcome]  # "val", "test"
    optimized: dict[str, EvalOutcome]
    history: list[dict[str, Any]]
    artifact: Path
    model_calls: int | None
    notes: list[str] = field(default_factory=list)
    comparisons: dict[str, EvalOutcome] = field(default_factory=dict)  # optimizer name -> its test run
    argmax: dict[str, EvalOutcome] = field(default_factory=dict)  # before ReAnchor's weights, when they were kept


def provenance(cfg: TaskConfig, split_fingerprint: str) -> dict[str, Any]:
    """Versions and fingerprints that say where an artifact came from (no secrets: env var *names* only)."""
    import transformers

    import vlmopt

    config_text = cfg.model_dump_yaml()
    return {
        "vlmopt": vlmopt.__version__,
        "dspy": dspy.__version__,
        "transformers": transformers.__version__,
        "config_sha256": hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
        "split_fingerprint": split_fingerprint,
        "optimizer": cfg.optimizer.model_dump(),
        "seed": cfg.seed,
    }


def _metrics_summary(outcome: EvalOutcome) -> dict[str, Any]:
    keys = ("n", "n_valid", "n_invalid", "invalid_rate", "accuracy", "accuracy_ci", "macro_f1", "latency", "tokens")
    return {k: outcome.metrics[k] for k in keys if k in outcome.metrics}


@dataclass
class Winner:
    """The searched program and the settings it runs under (the search may change them)."""

    cfg: TaskConfig
    splits: LoadedSplits
    program: dspy.Module
    lm: dspy.LM
    history: list[dict[str, Any]]
    instruction_candidates: list[str]
    notes: list[str]
    calibration: Calibration | None = None


@_closes_the_lms_it_creates
def optimize_task(
    cfg: TaskConfig,
    *,
    lm: dspy.LM | None = None,
    prompt_lm: dspy.LM | None = None,
    lm_factory=None,
    console: Console | None = None,
) -> OptimizeOutcome:
    """The held-out protocol: baseline on val and test, the search on train/val, the winner on test once.

    The search is MIPROv2 over instructions and demos; with ``optimizer.search_trials`` it is an
    outer Optuna study over program choices, each trial a MIPROv2 run (``lm_factory`` builds the
    LM a trial's settings need). Writes the run directory: ``baseline/`` (the config's prompt on
    test), ``predictions.jsonl`` and ``metrics.json`` (the winner on test),
    ``baseline_metrics.json``, ``trials.json``, ``prompt.json``, ``artifact.json``, ``report.html``;
    with ``optimizer.calibrate``, ``calibration.json`` (ReAnchor on val, before and after).
    """
    run, splits, lm, calls_before = _start_run(cfg, lm)
    threads = cfg.run.num_threads
    common = dict(labels=splits.labels, num_threads=threads, seed=cfg.seed, console=console)

    program = create_program(cfg.task, splits.labels)
    base = dict(lm=lm, task=cfg.task, **common)
    baseline = {
        "val": evaluate_program(program, splits.val, description="baseline val", **base),
        "test": evaluate_program(program, splits.test, run=run.child("baseline"), description="baseline test", **base),
    }
    trainset = demo_trainset(splits.train, cfg.optimizer.demo_max_image_side)
    metric = metric_for(cfg.task.output, fields=list(cfg.task.fields or {}) or None)
    if cfg.optimizer.search_trials:
        winner = _outer_search(cfg, run, splits, lm, prompt_lm, lm_factory, console)
    else:
        winner = _mipro_search(cfg, splits, program, trainset, lm, prompt_lm, metric)
    won = dict(lm=winner.lm, task=winner.cfg.task, **common)
    optimized = {"val": evaluate_program(winner.program, winner.splits.val, description="optimized val", **won)}
    argmax: dict[str, EvalOutcome] = {}  # the decision before ReAnchor's weights, when they were kept
    uncalibrated = None
    if cfg.optimizer.calibrate and (kept := _calibrate(winner, optimized["val"], won)) is not None:
        uncalibrated, calibrated_val = kept
        argmax["val"], optimized["val"] = optimized["val"], calibrated_val
    optimized["test"] = evaluate_program(winner.program, winner.splits.test, run=run, description="optimized test",
                                         **won)
    if uncalibrated is not None:  # the same test calls, replayed from the cache: only the decision differs
        argmax["test"] = _replayed(
            evaluate_program(uncalibrated, winner.splits.test, description="argmax test", **won), optimized["test"])
    comparisons = {
        name: evaluate_program(
            compile_comparison(name, program, trainset, metric=metric, settings=cfg.optimizer, lm=lm),
            splits.test, description=f"{name} test", **base,
        )
        for name in cfg.optimizer.compare
    }
    sizes = splits.sizes()
    for outcome in (*baseline.values(), *optimized.values(), *argmax.values(), *comparisons.values()):
        outcome.metrics.update(split_sizes=sizes, n_skipped=len(splits.skipped))
    run.write_json("baseline_metrics.json", {**baseline["test"].metrics, "split": "test"})
    for name, outcome in comparisons.items():
        run.write_json(f"{name}_metrics.json", {**outcome.metrics, "split": "test"})
    calibration = calibration_summary(
        winner.calibration,
        before={s: (argmax.get(s) or optimized[s]).metrics for s in ("val", "test")},
        after={s: optimized[s].metrics for s in ("val", "test")},
    ) if winner.calibration else None
    if calibration:
        run.write_json("calibration.json", calibration)
    run.write_json("trials.json", {"instruction_candidates": winner.instruction_candidates,
                                   "demo_effect": demo_effect(winner.history), "trials": winner.history})
    artifact = save_artifact(
        winner.program,
        winner.cfg,
        splits.labels,
        run.path / "artifact.json",
        metrics={
            "val": _metrics_summary(optimized["val"]),
            "test": _metrics_summary(optimized["test"]),
            "baseline": {"val": _metrics_summary(baseline["val"]), "test": _metrics_summary(baseline["test"])},
            "split_sizes": sizes,
            "calibration": {k: calibration[k] for k in ("kept", "weights", "val", "test")} if calibration else None,
        },
        provenance=provenance(winner.cfg, splits.fingerprint),
    )
    frozen = read_verified(artifact)  # apps replaying prompt.json need the calibrated decision too
    decision = {"decision": frozen["decision"]} if frozen["decision"] else {}
    run.write_json("prompt.json", {**frozen["prompt"], **decision})
    _finish_run(run, {**optimized["test"].metrics, "split": "test"})
    calls = _calls_since(lm, calls_before)
    return OptimizeOutcome(run, baseline, optimized, winner.history, artifact, calls, winner.notes, comparisons,
                           argmax)


def _calibrate(winner: Winner, optimized_val: EvalOutcome,
               won: dict[str, Any]) -> tuple[dspy.Module, EvalOutcome] | None:
    """ReAnchor on val; when its weights win, the winner decides with them from here on.

    ReAnchor's baseline is the argmax of the measured distribution; the shipped program answers
    with the generated label, which a server may pick slightly differently. So the weights are
    kept only when the calibrated program also beats the generated labels on val. Returns the
    uncalibrated program and the calibrated val outcome when they are, else None.
    """
    metric = metric_for(winner.cfg.task.output)
    result = calibrate_decision(winner.program, winner.splits.val, lm=winner.lm, metric=metric,
                                num_threads=winner.cfg.run.num_threads)
    winner.calibration = result
    kept = None
    if result.weights is not None:
        uncalibrated = winner.program.deepcopy()
        winner.program.label_weights = result.weights
        calibrated = _replayed(
            evaluate_program(winner.program, winner.splits.val, description="calibrated val", **won), optimized_val)
        if calibrated.metrics["accuracy"] > optimized_val.metrics["accuracy"]:
            kept = uncalibrated, calibrated
        else:
            winner.program.label_weights = result.weights = None
            result.note = "calibration: ReAnchor's weights did not beat the generated labels on val; not kept"
    if result.note:
        winner.notes.append(result.note)
    return kept


def _replayed(outcome: EvalOutcome, calls: EvalOutcome) -> EvalOutcome:
    """An evaluation replayed from the cache costs what the calls it replays cost (not cache lookups)."""
    outcome.metrics.update({key: calls.metrics[key] for key in ("latency", "tokens")})
    return outcome


def _mipro_search(cfg, splits, program, trainset, lm, prompt_lm, metric) -> Winner:
    """MIPROv2 over instructions x demo sets, demos capped to the context, on train/val."""
    settings, notes = _fit_demos(cfg, program, trainset, lm)
    sees_images = True
    if prompt_lm is None:
        prompt_lm, sees_images = create_prompt_lm(cfg, lm)
        if prompt_lm is not None and prompt_lm is not lm:  # a proposer LM built for this job
            _created(prompt_lm)
    result = run_mipro(
        program, trainset, splits.val, task_lm=lm, metric=metric, settings=settings, seed=cfg.seed,
        num_threads=cfg.run.num_threads, prompt_lm=prompt_lm, prompt_model_sees_images=sees_images,
    )
    return Winner(cfg, splits, result.program, lm, result.history, result.instruction_candidates, notes + result.notes)


def _outer_search(cfg, run, splits, lm, prompt_lm, lm_factory, console) -> Winner:
    """The Optuna study over program choices; the winner is rebuilt under its own settings."""
    factory = lm_factory or shared_lm_factory(lambda c: lm if _same_engine(c, cfg) else _created(create_lm(c)))
    search = run_search(cfg, run=run, lm_factory=factory, prompt_lm=prompt_lm, console=console,
                        objectives=cfg.optimizer.search_objectives)
    best = rebuild_trial(cfg, search.best)
    history = [{"trial": t.number, "score": t.values[0], "params": t.params} for t in search.trials]
    notes = [*search.notes, f"outer search: {len(search.trials)} trials in {search.storage} ({search.study_name}); "
             f"winner trial {search.best.number} with {search.best.params}"]
    return Winner(best.cfg, best.splits, best.program, factory(best.cfg), history,
                  [best.program.signature.instructions], notes)


def _same_engine(a: TaskConfig, b: TaskConfig) -> bool:
    """Same weights and backend (structured generation is switched on the loaded model)."""
    return (a.model, a.backend) == (b.model, b.backend)


def _fit_demos(cfg: TaskConfig, program, trainset, lm) -> tuple[OptimizerConfig, list[str]]:
    """The optimizer settings with demos capped to what fits the model's context (and why)."""
    settings = cfg.optimizer
    wanted = max(settings.max_labeled_demos, settings.max_bootstrapped_demos)
    fits, note = max_demos_that_fit(program, trainset, lm, wanted, cfg.model.max_new_tokens)
    if fits >= wanted:
        return settings, []
    capped = settings.model_copy(
        update={"max_labeled_demos": min(settings.max_labeled_demos, fits),
                "max_bootstrapped_demos": min(settings.max_bootstrapped_demos, fits)}
    )
    return capped, [note]


def _calls_since(lm: dspy.LM, before: int | None) -> int | None:
    after = model_calls(lm)
    return None if before is None or after is None else after - before
