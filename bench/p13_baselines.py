"""P13: the classic baselines beside the prompt-optimized micro-VLM, on one seeded split, in one table.

The task is the micro-VLM's "which row holds the shape?" (``vlmopt/demo/shapes_task.py``): 64 px
drawings, labels 1/2/3. Three runs share one config (same seed, same split fingerprint):

1. ``optimize_task`` with the offline demo's settings: the vague hand-written prompt (baseline)
   and the MIPROv2 winner, both on test, on the shipped micro-VLM (0.77 M parameters, trained on
   this task family);
2. ``run_baselines`` with a tiny **random-weight** CLIP (``vlmopt.testing.tiny_clip``, 32 px input):
   zero-shot over the label names, and the linear probe on its image embeddings.

A random CLIP has learnt nothing, so its zero-shot figure should sit at chance (1/3); the probe
measures how much a linear read-out of *random* ViT features recovers of the object's row (random
projections keep position). Neither says anything about a pretrained CLIP on real images: with no
hub here, no pretrained checkpoint can be measured. The table is the figure; `vlmopt report`
prints the same from the run directories.

    python bench/p13_baselines.py                  # 40 images per class: train 24, val 48, test 48
    python bench/p13_baselines.py --per-class 80 --seed 1
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
from pathlib import Path

from rich.console import Console

from vlmopt.alternatives.run import BaselineSettings, run_baselines
from vlmopt.demo import offline_demo_config
from vlmopt.demo.shapes_task import write_micro_task_dataset
from vlmopt.pipeline import optimize_task
from vlmopt.reports.comparison_outputs import markdown_table, rich_table
from vlmopt.reports.run_comparison import check_same_test_set, collect_runs
from vlmopt.testing.tiny_clip import build_tiny_clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-seed", type=int, default=0, help="seed of the random CLIP's weights")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - progress bars off for the table
    console = Console(width=160)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = offline_demo_config(Path(tmp))
        data = write_micro_task_dataset(
            Path(tmp) / "bench-data", attribute="row", n_per_class=args.per_class, seed=args.seed
        )
        cfg = cfg.model_copy(
            update={"seed": args.seed, "dataset": cfg.dataset.model_copy(update={"source": str(data)})}
        )
        optimized = optimize_task(cfg, console=quiet)
        clip = build_tiny_clip("clip", Path(tmp) / "random-clip", seed=args.clip_seed)
        baselines = run_baselines(cfg, BaselineSettings(model=str(clip), probe=True), console=quiet)
        runs = collect_runs([optimized.run.path, baselines.run.path])
        check_same_test_set(runs)
        console.print(rich_table(runs))
        console.print(markdown_table(runs))
        probe = baselines.methods["linear-probe"].metrics["probe"]
        console.print(f"probe C {probe['C']} chosen on val from {probe['val_accuracy_by_C']}")
        console.print(
            f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f}, "
            f"per class {args.per_class}, seed {args.seed}, clip seed {args.clip_seed}"
        )


if __name__ == "__main__":
    main()
