"""``vlmopt demo --offline``: the whole pipeline on fixtures, for machines without the hub.

It builds the tiny random-weight Idefics3 (SmolVLM architecture) fixture VLM and a synthetic
shapes image set, then runs the same code a real task runs. The model's weights are random: the
numbers it prints check the pipeline (loading, prompting, typed decoding, metrics, run files),
they are **not** an accuracy claim, and the output says so.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from vlmopt.config import DatasetConfig, ModelConfig, OptimizerConfig, RunConfig, TaskConfig, TaskSpec
from vlmopt.pipeline import optimize_task
from vlmopt.reports.comparison_table import comparison_table
from vlmopt.testing.images import make_image_dataset
from vlmopt.testing.tiny_vlm import build_tiny_vlm

SHAPES = ("circle", "square", "triangle")
NOTICE = (
    "PIPELINE CHECK on a tiny random-weight fixture VLM and synthetic shapes.\n"
    "It exercises every stage end to end; its accuracy means nothing about any real model."
)


def offline_demo_config(workdir: Path) -> TaskConfig:
    """Build the fixture model and images under ``workdir`` and describe the task over them."""
    model_dir = build_tiny_vlm("idefics3", workdir / "model")
    data = make_image_dataset(workdir / "data", classes=SHAPES, n_per_class=10, size=64)
    return TaskConfig(
        name="demo-offline",
        model=ModelConfig(id=str(model_dir), max_new_tokens=16),
        dataset=DatasetConfig(source=str(data.folder), kind="imagefolder", max_image_side=64),
        task=TaskSpec(
            labels=list(SHAPES),
            system_prompt="You look at simple drawings of shapes.",
            user_prompt="What shape is shown?",
        ),
        optimizer=OptimizerConfig(
            auto=None, num_candidates=3, num_trials=4, max_bootstrapped_demos=1, max_labeled_demos=2,
            minibatch=False, prompt_model="none",
            instructions=["Name the shape in the picture.", "Is it a circle, a square or a triangle?"],
        ),
        run=RunConfig(output_dir=str(workdir / "runs"), cache_dir=str(workdir / "cache"), num_threads=4),
    )


def run_offline_demo(workdir: str | Path, console: Console | None = None) -> Path:
    """Run the offline pipeline check; return its run directory."""
    console = console or Console()
    console.print(Panel(NOTICE, title="vlmopt demo --offline", border_style="yellow"))
    cfg = offline_demo_config(Path(workdir))
    outcome = optimize_task(cfg, console=console)
    table = comparison_table(outcome)
    table.title = "pipeline check (random weights: not an accuracy claim)"
    console.print(table)
    console.print(f"artifact: [bold]{outcome.artifact}[/]\nrun directory: [bold]{outcome.run.path}[/]")
    return outcome.run.path
