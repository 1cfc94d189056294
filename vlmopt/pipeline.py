"""Task-level jobs the CLI and notebooks call: config in, run directory out.

The CLI is thin glue over these functions; each one is usable from a notebook too.

Example::

    run, outcome = evaluate_task(load_config("configs/cats_vs_dogs.yaml"), split="test", limit=20)
    print(run.path, outcome.metrics["accuracy"])
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dspy
from rich.console import Console

from vlmopt.artifacts import check_backend, config_for_artifact, load_artifact, read_verified, save_artifact
from vlmopt.config import TaskConfig
from vlmopt.datasets import LoadedSplits, load_splits
from vlmopt.evaluate import EvalOutcome, SplitInfo, evaluate_program
from vlmopt.metrics import metric_for
from vlmopt.optimizers.abstention import abstention_summary, choose_abstention
from vlmopt.optimizers.compare_methods import comparison_record, score_on_test, search_or_compare
from vlmopt.optimizers.methods import METHODS, methods_to_run
from vlmopt.optimizers.mipro import compile_comparison, demo_effect
from vlmopt.optimizers.reanchor import calibrate_decision, calibration_summary
from vlmopt.optimizers.search import Winner
from vlmopt.optimizers.trial_program import demo_trainset
from vlmopt.programs import create_program
from vlmopt.reports.html import write_report
from vlmopt.reports.plots import RISK_COVERAGE_PNG, plot_confusion_matrix, plot_risk_coverage
from vlmopt.reports.run_dir import ABSTENTION, METRICS, RunDir
from vlmopt.serving.factory import closes_the_lms_it_creates, create_lm, job_owned, model_calls

SplitName = Literal["train", "val", "test", "all"]


def configure_cache(cfg: TaskConfig) -> Path:
    """Put DSPy's disk cache under the project, so reruns replay finished model calls."""
    cache_dir = Path(cfg.run.cache_dir).resolve()
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(cache_dir))
    return cache_dir


def _start_run(cfg: TaskConfig, lm: dspy.LM | None) -> tuple[RunDir, LoadedSplits, dspy.LM, int | None]:
    """Run directory first (an unwritable one fails before any work), then data, then the model."""
    run = RunDir.create(cfg.run.output_dir, cfg.name or "run")
    run.write_config(cfg)
    configure_cache(cfg)
    splits = load_splits(cfg)
    for skip in splits.skipped:
        run.append_failure(skip.id, "image", f"{skip.reason}: {skip.message}")
    lm = lm or job_owned(create_lm(cfg))
    return run, splits, lm, model_calls(lm)


@closes_the_lms_it_creates
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
    started = time.perf_counter()
    if artifact is not None and lm is None:  # a fine-tuned artifact runs on its LoRA adapter
        cfg = config_for_artifact(cfg, load_artifact(artifact))
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
        split=SplitInfo.of(split, splits),
    )
    outcome.model_calls = _calls_since(lm, calls_before)
    outcome.metrics.update(_cost("prompt", outcome.model_calls, started))
    finish_run(run, outcome.metrics)
    return run, outcome


def _cost(method: str, model_calls: int | None, started: float) -> dict[str, Any]:
    """What the comparison table reads besides the metrics (``reports/run_comparison.py``): the whole run's cost."""
    return {"method": method, "model_calls": model_calls, "wall_s": time.perf_counter() - started}


def finish_run(run: RunDir, metrics: dict[str, Any]) -> None:
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
    method: str = "mipro"  # the search method whose program is the artifact
    methods: dict[str, Any] = field(default_factory=dict)  # --compare: method name -> its MethodRun


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
    keys = ("n", "n_valid", "n_invalid", "invalid_rate", "accuracy", "accuracy_ci", "macro_f1", "latency", "tokens",
            "selective", "other")
    return {k: outcome.metrics[k] for k in keys if k in outcome.metrics}


@closes_the_lms_it_creates
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
    with ``optimizer.calibrate``, ``calibration.json`` (ReAnchor on val, before and after); with
    ``optimizer.abstain``, ``abstention.json`` and ``risk_coverage.png`` (threshold chosen on val); with
    search methods in ``optimizer.compare``, ``comparison.json`` (each method on val and test).
    A method that cannot run (no prompt model) is refused, or skipped in a comparison, before any work.
    """
    methods, skipped = methods_to_run(cfg)
    started = time.perf_counter()
    run, splits, lm, calls_before = _start_run(cfg, lm)
    threads = cfg.run.num_threads
    common = dict(labels=splits.labels, num_threads=threads, seed=cfg.seed, console=console)

    val, test = SplitInfo.of("val", splits), SplitInfo.of("test", splits)

    program = create_program(cfg.task, splits.labels)
    base = dict(lm=lm, task=cfg.task, **common)
    baseline = {
        "val": evaluate_program(program, splits.val, description="baseline val", split=val, **base),
        "test": evaluate_program(program, splits.test, run=run.child("baseline"), description="baseline test",
                                 split=test, **base),
    }
    baseline["test"].metrics.update(_cost("prompt-baseline", _calls_since(lm, calls_before), started))
    winner, method_runs = search_or_compare(cfg, splits, lm, methods, run=run, prompt_lm=prompt_lm,
                                            lm_factory=lm_factory, console=console)
    winner.notes[:0] = skipped
    won = dict(lm=winner.lm, task=winner.cfg.task, **common)
    optimized = {"val": evaluate_program(winner.program, winner.splits.val, description="optimized val", split=val,
                                         **won)}
    argmax: dict[str, EvalOutcome] = {}  # the decision before ReAnchor's weights, when they were kept
    uncalibrated = None
    if cfg.optimizer.calibrate and (kept := _calibrate(winner, optimized["val"], dict(won, split=val))) is not None:
        uncalibrated, calibrated_val = kept
        argmax["val"], optimized["val"] = optimized["val"], calibrated_val
    if cfg.optimizer.abstain is not None:  # on the final decision's val records; test stays untouched
        winner.program.abstention = choose_abstention(optimized["val"].records, cfg.optimizer.abstain)
        optimized["val"] = evaluate_program(winner.program, winner.splits.val, description="abstaining val",
                                            split=val, replays=optimized["val"], **won)
    optimized["test"] = evaluate_program(winner.program, winner.splits.test, run=run, description="optimized test",
                                         split=test, **won)
    if uncalibrated is not None:  # the same test calls, replayed from the cache: only the decision differs
        argmax["test"] = evaluate_program(uncalibrated, winner.splits.test, description="argmax test", split=test,
                                          replays=optimized["test"], **won)
    if method_runs:
        score_on_test(method_runs, winner.method, optimized["test"], splits, console)
        run.write_json("comparison.json", comparison_record(method_runs, winner.method, baseline["test"]))
    comparisons: dict[str, EvalOutcome] = {}
    simple = [name for name in cfg.optimizer.compare if name not in METHODS]
    if simple:  # the search downscaled its own demo pool; only comparisons need another
        trainset = demo_trainset(splits.train, cfg.optimizer.demo_max_image_side)
        metric = metric_for(cfg.task.output, fields=list(cfg.task.fields or {}) or None)
        comparisons = {
            name: evaluate_program(
                compile_comparison(name, program, trainset, metric=metric, settings=cfg.optimizer, lm=lm),
                splits.test, description=f"{name} test", split=test, **base,
            )
            for name in simple
        }
    run.write_json("baseline_metrics.json", baseline["test"].metrics)
    for name, outcome in comparisons.items():
        run.write_json(f"{name}_metrics.json", outcome.metrics)
    calibration = calibration_summary(
        winner.calibration,
        before={s: (argmax.get(s) or optimized[s]).metrics for s in ("val", "test")},
        after={s: optimized[s].metrics for s in ("val", "test")},
    ) if winner.calibration else None
    if calibration:
        run.write_json("calibration.json", calibration)
    if winner.program.abstention:
        winner.notes.extend(_report_abstention(run, winner.program.abstention, optimized))
    run.write_json("trials.json", {"method": winner.method, "instruction_candidates": winner.instruction_candidates,
                                   "demo_effect": demo_effect(winner.history), "trials": winner.history,
                                   "details": winner.details})
    artifact = save_artifact(
        winner.program,
        winner.cfg,
        splits.labels,
        run.path / "artifact.json",
        metrics={
            "val": _metrics_summary(optimized["val"]),
            "test": _metrics_summary(optimized["test"]),
            "baseline": {"val": _metrics_summary(baseline["val"]), "test": _metrics_summary(baseline["test"])},
            "split_sizes": splits.sizes(),
            "calibration": {k: calibration[k] for k in ("kept", "weights", "val", "test")} if calibration else None,
        },
        provenance=provenance(winner.cfg, splits.fingerprint),
    )
    frozen = read_verified(artifact).content()  # apps replaying prompt.json need the calibrated decision too
    decision = {"decision": frozen["decision"]} if frozen["decision"] else {}
    run.write_json("prompt.json", {**frozen["prompt"], **decision})
    calls = _calls_since(lm, calls_before)
    optimized["test"].metrics.update(_cost("prompt-optimized", calls, started))
    finish_run(run, optimized["test"].metrics)
    outcome = OptimizeOutcome(run, baseline, optimized, winner.history, artifact, calls, winner.notes, comparisons,
                              argmax, winner.method, method_runs)
    if cfg.run.mlflow_tracking_uri:
        from vlmopt.reports.mlflow_tracking import log_optimize_run

        log_optimize_run(cfg, outcome)
    return outcome


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
        calibrated = evaluate_program(winner.program, winner.splits.val, description="calibrated val",
                                      replays=optimized_val, **won)
        if calibrated.metrics["accuracy"] > optimized_val.metrics["accuracy"]:
            kept = uncalibrated, calibrated
        else:
            winner.program.label_weights = result.weights = None
            result.note = "calibration: ReAnchor's weights did not beat the generated labels on val; not kept"
    if result.note:
        winner.notes.append(result.note)
    return kept


def _report_abstention(run: RunDir, section: dict[str, Any], optimized: dict[str, EvalOutcome]) -> list[str]:
    """``abstention.json`` and ``risk_coverage.png`` (val and test curves, the threshold marked); its notes."""
    summary = abstention_summary(section, optimized["val"].records, optimized["test"].records,
                                 {split: optimized[split].metrics for split in ("val", "test")})
    run.write_json(ABSTENTION, summary)
    plot_risk_coverage(summary, run.path / RISK_COVERAGE_PNG)
    return summary["notes"]


def _calls_since(lm: dspy.LM, before: int | None) -> int | None:
    after = model_calls(lm)
    return None if before is None or after is None else after - before
