"""``vlmopt demo --offline``: the whole product on a toy model, for machines without the hub.

The model is the micro-VLM this project trains and ships (``vlmopt/demo/assets/micro_vlm``): a
0.77 M-parameter Idefics3 trained on synthetic drawings of one shape in a 3x3 grid. It answers
"which row" and "which column" with the same labels 1/2/3, so only the instruction says which is
meant — a vague instruction scores near 50%, a precise one near 100%, even with the labels
enforced by the grammar. The demo starts from a vague hand-written prompt, searches candidate
instructions and demos with MIPROv2 (no prompt model needed), and reports both on the untouched
test split. It is labelled plainly as what it is: a toy model on synthetic shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from vlmopt.config import DatasetConfig, ModelConfig, OptimizerConfig, RunConfig, TaskConfig, TaskSpec
from vlmopt.demo.shapes_task import LABELS, write_micro_task_dataset

NOTICE = (
    "TOY MODEL on SYNTHETIC SHAPES: the micro-VLM was trained by this project on drawings of one\n"
    "shape in a 3x3 grid. The gain shows prompt search working end to end; it says nothing about\n"
    "any real model or real images."
)
BASELINE_PROMPT = "Describe the image."
CANDIDATES = [
    "What do you see?",
    "In which row is the object?",
    "Which of the three rows contains the shape?",
    "In which column is the object?",
]


def offline_demo_config(workdir: Path) -> TaskConfig:
    """The micro task (which row holds the shape?) under ``workdir``, starting from a vague prompt."""
    from vlmopt.demo.micro_vlm import micro_vlm_dir  # torch: imported by the job, not by the package

    data = write_micro_task_dataset(workdir / "data", attribute="row", n_per_class=20, seed=0)
    return TaskConfig(
        name="demo-offline",
        seed=0,
        model=ModelConfig(id=str(micro_vlm_dir()), max_new_tokens=16),
        dataset=DatasetConfig(source=str(data), kind="imagefolder", max_image_side=64),
        task=TaskSpec(labels=list(LABELS), system_prompt=BASELINE_PROMPT),
        optimizer=OptimizerConfig(
            auto=None, num_candidates=len(CANDIDATES) + 1, num_trials=8, max_bootstrapped_demos=1,
            max_labeled_demos=2, minibatch=False, prompt_model="none", instructions=CANDIDATES,
            demo_max_image_side=64,
        ),
        run=RunConfig(output_dir=str(workdir / "runs"), cache_dir=str(workdir / "cache"), num_threads=4),
    )


def run_offline_demo(workdir: str | Path, console: Console | None = None) -> Path:
    """Run the offline demo; return its run directory."""
    from vlmopt.pipeline import optimize_task
    from vlmopt.reports.comparison_table import comparison_table

    console = console or Console()
    console.print(Panel(NOTICE, title="vlmopt demo --offline", border_style="yellow"))
    cfg = offline_demo_config(Path(workdir))
    outcome = optimize_task(cfg, console=console)
    table = comparison_table(outcome)
    table.title = "toy micro-VLM on synthetic shapes — test split: vague prompt vs optimized"
    console.print(table)
    before, after = (outcome.baseline["test"].metrics["accuracy"], outcome.optimized["test"].metrics["accuracy"])
    console.print(f"chosen instruction: [bold]{_instruction(outcome)}[/]  (test accuracy {before:.3f} -> {after:.3f})")
    console.print(f"artifact: [bold]{outcome.artifact}[/]\nrun directory: [bold]{outcome.run.path}[/]")
    return outcome.run.path


def _instruction(outcome) -> str:
    return json.loads(outcome.artifact.read_text())["prompt"]["messages"][0]["content"]
