"""What the throughput benches share: the seeded shapes images, a program with k image demos, images/s.

Every figure in P7, P9 and P10 comes from ``images_per_s``: the ``Classify`` program (single
label, 3 classes) through ``evaluate_program`` with ``threads`` concurrent calls, as
``vlmopt evaluate`` runs it. Demos are drawn from their own seed, so queries never repeat them.
"""

from __future__ import annotations

import io
import random
import time

import dspy
from rich.console import Console

from vlmopt.config import TaskSpec
from vlmopt.datasets.images import to_dspy_image
from vlmopt.evaluate import evaluate_program
from vlmopt.programs import create_program
from vlmopt.testing.images import draw_shape

LABELS = ["circle", "square", "triangle"]
TASK = TaskSpec(labels=LABELS)


def bench_images(count: int, side: int, seed: str = "p7") -> list[dspy.Example]:
    """Seeded synthetic shapes, encoded once like the dataset loader does."""
    examples = []
    for i in range(count):
        label = LABELS[i % len(LABELS)]
        image = draw_shape(label, size=side, rng=random.Random(f"{seed}:{i}"))
        examples.append(dspy.Example(image=to_dspy_image(image), label=label, id=str(i)).with_inputs("image"))
    return examples


def program_with_demos(demos: int, side: int) -> dspy.Module:
    """The classifier with ``demos`` labelled image demos (what an optimized few-shot program carries)."""
    program = create_program(TASK, LABELS)
    program.predictors()[0].demos = bench_images(demos, side, seed="demos")
    return program


def images_per_s(lm: dspy.LM, program: dspy.Module, examples: list[dspy.Example], threads: int) -> float:
    quiet = Console(file=io.StringIO())
    start = time.perf_counter()
    outcome = evaluate_program(program, examples, lm=lm, task=TASK, labels=LABELS, num_threads=threads,
                               console=quiet)
    elapsed = time.perf_counter() - start
    if outcome.failed_ids:
        raise RuntimeError(f"{len(outcome.failed_ids)} items failed: {next(iter(outcome.errors.values()))}")
    return len(examples) / elapsed
