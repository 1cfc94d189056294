"""Task-level jobs the CLI and notebooks call: config in, run directory out.

The CLI is thin glue over these functions; each one is usable from a notebook too.

Example::

    run, outcome = evaluate_task(load_config("configs/cats_vs_dogs.yaml"), split="test", limit=20)
    print(run.path, outcome.metrics["accuracy"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dspy
from rich.console import Console

from vlmopt.config import TaskConfig
from vlmopt.datasets import load_splits
from vlmopt.evaluate import EvalOutcome, evaluate_program
from vlmopt.metrics import plot_confusion_matrix
from vlmopt.programs import create_program
from vlmopt.reports.html import write_report
from vlmopt.reports.run_dir import METRICS, RunDir
from vlmopt.serving.factory import create_lm

SplitName = Literal["train", "val", "test", "all"]


def configure_cache(cfg: TaskConfig) -> Path:
    """Put DSPy's disk cache under the project, so reruns replay finished model calls."""
    cache_dir = Path(cfg.run.cache_dir).resolve()
    dspy.configure_cache(enable_disk_cache=True, enable_memory_cache=True, disk_cache_dir=str(cache_dir))
    return cache_dir


def evaluate_task(
    cfg: TaskConfig,
    *,
    split: SplitName = "test",
    limit: int | None = None,
    num_threads: int | None = None,
    lm: dspy.LM | None = None,
    console: Console | None = None,
) -> tuple[RunDir, EvalOutcome]:
    """Evaluate the config's own (hand-written) prompt on a split; write a run directory."""
    run = RunDir.create(cfg.run.output_dir, cfg.name or "run")
    run.write_config(cfg)
    configure_cache(cfg)
    splits = load_splits(cfg)
    for skip in splits.skipped:
        run.append_failure(skip.id, "image", skip.message)
    examples = splits.all if split == "all" else getattr(splits, split)
    examples = examples[:limit] if limit else examples
    program = create_program(cfg.task, splits.labels)
    outcome = evaluate_program(
        program,
        examples,
        lm=lm or create_lm(cfg),
        task=cfg.task,
        labels=splits.labels,
        run=run,
        num_threads=num_threads or cfg.run.num_threads,
        seed=cfg.seed,
        console=console,
        description=f"evaluate {split}",
    )
    outcome.metrics.update(split=split, n_skipped=len(splits.skipped), split_sizes=splits.sizes())
    run.write_json(METRICS, outcome.metrics)
    if "confusion" in outcome.metrics:
        plot_confusion_matrix(outcome.metrics["confusion"], run.path / "confusion.png")
    write_report(run.path)
    return run, outcome
