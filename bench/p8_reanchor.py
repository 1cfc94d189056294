"""P8: ReAnchor's decision calibration on a real trained model, per prompt: accuracy and ECE before/after.

The model is the micro-VLM (``vlmopt/demo/assets/micro_vlm``) on its "which row?" task, in
process, with label probabilities measured by the engine. For each instruction — vague ones, the
precise ones, and a wrong one ("which column?", whose answer is never the row) — the script
evaluates the plain argmax on val and test, fits ReAnchor's per-label weights on val
(``calibrate_decision``, kept only when they win under its fold check), and evaluates the
calibrated decision on test. It also times the calibration against one val evaluation of the
same program in the same run (the calibration replays those cached calls: it costs decisions only).

    python bench/p8_reanchor.py                 # 40 images per class
    python bench/p8_reanchor.py --per-class 80 --seed 1
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vlmopt.datasets import load_splits
from vlmopt.demo import BASELINE_PROMPT, CANDIDATES, offline_demo_config
from vlmopt.demo.shapes_task import write_micro_task_dataset
from vlmopt.evaluate import evaluate_program
from vlmopt.metrics import metric_for
from vlmopt.optimizers.reanchor import calibrate_decision, decision_metrics
from vlmopt.pipeline import configure_cache
from vlmopt.programs import create_program
from vlmopt.serving.factory import create_lm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    logging.disable(logging.INFO)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - progress bars off for the table

    with tempfile.TemporaryDirectory() as tmp:
        cfg = offline_demo_config(Path(tmp))
        data = write_micro_task_dataset(Path(tmp) / "bench-data", attribute="row", n_per_class=args.per_class,
                                        seed=args.seed)
        cfg = cfg.model_copy(update={"seed": args.seed,
                                     "dataset": cfg.dataset.model_copy(update={"source": str(data)})})
        configure_cache(cfg)
        splits = load_splits(cfg)
        lm = create_lm(cfg)
        table = Table(title=f"P8 ReAnchor on the micro-VLM (row task), split sizes {splits.sizes()}")
        for column in ("instruction", "val acc", "test acc argmax -> ReAnchor", "test ECE", "test Brier",
                       "weights kept", "calibration / val eval wall"):
            table.add_column(column)
        for prompt in (BASELINE_PROMPT, *CANDIDATES):
            table.add_row(*measure(prompt, cfg, splits, lm, args.threads, quiet))
        Console(width=200).print(table)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; {args.threads} threads; micro-VLM fp32 in process")


def measure(prompt, cfg, splits, lm, threads, quiet) -> list[str]:
    """One table row: the plain argmax vs ReAnchor's calibrated decision under ``prompt``."""
    task = cfg.task.model_copy(update={"system_prompt": prompt})
    program = create_program(task, splits.labels)
    run = dict(lm=lm, task=task, labels=splits.labels, num_threads=threads, console=quiet)
    started = time.perf_counter()
    val = evaluate_program(program, splits.val, **run)  # the model calls: the timing baseline
    eval_s = time.perf_counter() - started
    test = decision_metrics(evaluate_program(program, splits.test, **run).metrics)
    started = time.perf_counter()
    result = calibrate_decision(program, splits.val, lm=lm, metric=metric_for("single_label"), num_threads=threads)
    calib_s = time.perf_counter() - started
    after_val, after = val.metrics["accuracy"], test
    if result.weights:
        program.label_weights = result.weights
        after_val = evaluate_program(program, splits.val, **run).metrics["accuracy"]
        after = decision_metrics(evaluate_program(program, splits.test, **run).metrics)
    weights = ", ".join(f"{k}:{w:g}" for k, w in result.weights.items()) if result.weights else "none (argmax kept)"
    return [
        prompt,
        f"{val.metrics['accuracy']:.3f} -> {after_val:.3f}",
        f"{test['accuracy']:.3f} -> {after['accuracy']:.3f}",
        f"{test['ece']:.3f} -> {after['ece']:.3f}",
        f"{test['brier']:.3f} -> {after['brier']:.3f}",
        weights,
        f"{calib_s:.2f} s / {eval_s:.2f} s = {calib_s / eval_s:.1f}x",
    ]


if __name__ == "__main__":
    main()
