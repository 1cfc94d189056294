"""P15: LoRA fine-tuning vs prompt optimization on the trained micro-VLM, same task, same splits.

The offline demo's task (which row holds the shape; 20 images per class: train 12, val 24, test
24) starts from the vague instruction "Describe the image.", under which the micro-VLM answers the
row or the column about half-half. Side by side, in one run:

* **baseline** — the vague prompt as written (``evaluate_task`` on test);
* **prompt-optimized** — ``optimize_task``: MIPROv2 over the demo's candidate instructions and
  demos, chosen on val, reported on test (what ``tests/test_micro_vlm_optimize.py`` checks);
* **fine-tuned** — ``finetune_task``: a LoRA adapter trained under the *vague* prompt on train,
  early-stopped on the val loss, reported on test: the weights learn which question is meant.

Prints test accuracy, model calls, wall and trainable parameters per row, as JSON.

    python bench/p15_finetune_micro_vlm.py [--epochs 8 --lr 5e-3] [--workdir /tmp/p15]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vlmopt.alternatives.finetune import FinetuneSettings, finetune_task
from vlmopt.demo import offline_demo_config
from vlmopt.pipeline import optimize_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="p15-"))
    rows = {}

    started = time.monotonic()
    optimized = optimize_task(offline_demo_config(workdir / "optimize"))
    rows["baseline (vague prompt)"] = {"test_accuracy": optimized.baseline["test"].metrics["accuracy"]}
    rows["prompt-optimized"] = {
        "test_accuracy": optimized.optimized["test"].metrics["accuracy"],
        "model_calls": optimized.model_calls,
        "wall_s": round(time.monotonic() - started, 1),
        "trainable_parameters": 0,
    }

    settings = FinetuneSettings(epochs=args.epochs, lr=args.lr, rank=args.rank, alpha=2 * args.rank)
    tuned = finetune_task(offline_demo_config(workdir / "finetune"), settings=settings)
    rows["fine-tuned (LoRA, vague prompt)"] = {
        "test_accuracy": tuned.metrics["accuracy"],
        "model_calls": tuned.metrics["model_calls"],
        "wall_s": tuned.metrics["wall_s"],
        "trainable_parameters": tuned.metrics["parameters_detail"]["trainable"],
        "total_parameters": tuned.metrics["parameters"],
        "steps": tuned.training["global_step"],
        "best_val_loss": tuned.training["best_val_loss"],
    }
    print(
        json.dumps(
            {"n_test": tuned.metrics["n"], "settings": vars(args) | {"workdir": str(workdir)}, "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
