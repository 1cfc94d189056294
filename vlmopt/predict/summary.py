"""What a predict run did, in counts that add up: ``total = skipped + predicted + failed + not_attempted``.

``skipped`` are the images a previous run already wrote (resume), ``failed`` are in the failures
file, ``not_attempted`` were left when ``--max-failures`` stopped the run. ``labels`` counts every
row of the output — earlier runs' too — so a resumed nightly file reports its whole content.

The exit code says whether everything was predicted: 0 every image has a row; 1 the run went
through but some images failed (rerun the same command to retry just those); 2 the run stopped
(too many failures).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

STAGE_NAMES = {"read": "unreadable", "predict": "failed calls"}


@dataclass
class PredictSummary:
    output: Path
    failures_path: Path
    total: int  # distinct images the inputs name
    skipped: int  # already in the output when the run started
    predicted: int  # rows this run wrote
    failed: Counter[str] = field(default_factory=Counter)  # by stage: "read" (unreadable), "predict" (call)
    not_attempted: int = 0
    labels: Counter[str] = field(default_factory=Counter)  # every row in the output, by answer
    stopped: str | None = None  # why the run stopped early
    wall_s: float = 0.0  # the streaming part (one machine: model loading not included; Ray: the actors' is)
    first_s: float = 0.0  # seconds until the first image came back (on Ray: the pool's start-up)

    @property
    def n_failed(self) -> int:
        return sum(self.failed.values())

    @property
    def complete(self) -> bool:
        """Every image the inputs name has a row in the output."""
        return self.stopped is None and self.n_failed == 0 and self.not_attempted == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else 2 if self.stopped else 1

    def as_dict(self) -> dict:
        return {"output": str(self.output), "failures": str(self.failures_path), "total": self.total,
                "skipped": self.skipped, "predicted": self.predicted, "failed": dict(self.failed),
                "not_attempted": self.not_attempted, "labels": dict(self.labels), "stopped": self.stopped,
                "complete": self.complete}


def summary_table(summary: PredictSummary) -> Table:
    """The closing table the CLI prints: the counts, then the output's label counts."""
    table = Table(title=f"predict -> {summary.output}", show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("images", justify="right")
    rate = summary.predicted / summary.wall_s if summary.wall_s > 0 else 0.0
    table.add_row("predicted this run", f"{summary.predicted}  ({rate:.2f} img/s)")
    table.add_row("already in the output (skipped)", str(summary.skipped))
    failed = ", ".join(f"{n} {STAGE_NAMES.get(stage, stage)}" for stage, n in sorted(summary.failed.items()))
    table.add_row(f"failed (-> {summary.failures_path})", f"{summary.n_failed}" + (f"  ({failed})" if failed else ""))
    if summary.not_attempted:
        table.add_row("not attempted (stopped)", str(summary.not_attempted))
    table.add_row("total", str(summary.total))
    for label, n in sorted(summary.labels.items(), key=lambda kv: (-kv[1], kv[0])):
        table.add_row(f"  label {label}", str(n))
    return table
