"""A rich progress bar for the trainer's steps (its own tqdm bars are turned off).

It starts at the step a resumed run continues from, so a rerun after a kill shows where it is,
and it carries the last train and eval loss.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import TrainerCallback


class RichProgressCallback(TrainerCallback):
    """Steps done out of ``max_steps``, with the latest losses; ``started_at`` is the step training began from."""

    def __init__(self, console: Console | None = None, description: str = "finetune"):
        self.console = console
        self.description = description
        self.started_at: int | None = None
        self._progress: Progress | None = None
        self._bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started_at = state.global_step
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("val {task.fields[val]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._bar = self._progress.add_task(
            self.description, total=state.max_steps, completed=state.global_step, loss="-", val="-"
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._bar, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is None or not logs:
            return
        if "loss" in logs:
            self._progress.update(self._bar, loss=f"{float(logs['loss']):.4f}")
        if "eval_loss" in logs:
            self._progress.update(self._bar, val=f"{float(logs['eval_loss']):.4f}")

    def on_train_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._bar, completed=state.global_step)
        self.stop()

    def stop(self) -> None:
        """Close the bar (also when training raised, e.g. on Ctrl-C)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
