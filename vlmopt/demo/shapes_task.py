"""The micro-VLM's synthetic task: one small shape in a cell of a 3x3 grid.

Every image answers two questions with the SAME label set ``"1" "2" "3"``: which row the object
is in (counted from the top, ``row``) and which column (counted from the left, ``column``). The
row never equals the column, so an answer to the wrong question is always wrong. A closed label
set therefore cannot rescue a vague prompt: only the instruction (or demos labelled by one
attribute) says which question is asked. That makes the prompt measurably matter, which is what
the prompt optimizer's tests and the offline demo need.

(Counting 1-3 objects against their column was tried first: with the instruction deciding the
attribute, a 2-core CPU budget of ten minutes was not enough to learn it; row against column was.)

The instruction lists are part of the task: the micro-VLM is trained on ``TRAIN`` phrasings and
``VAGUE`` ones (answered with either attribute at random), and evaluated on those plus the
``HELD_OUT`` phrasings it never saw.

Example::

    image, answers = draw_scene(random.Random(0))      # answers == {"row": "2", "column": "3"}
    write_micro_task_dataset("/tmp/rows", attribute="row", n_per_class=20)
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from vlmopt.demo.shapes import SHAPES

LABELS = ("1", "2", "3")
ATTRIBUTES = ("row", "column")
IMAGE_SIDE = 64
GRID = 3
OBJECT_SIDE = (12, 18)
"""Object side in px; a grid cell is 64 / 3 ~ 21 px, so an object stays inside its cell."""
_SHAPE_NAMES = ("circle", "square", "triangle", "diamond")

TRAIN: dict[str, tuple[str, ...]] = {
    "row": (
        "In which row is the object?",
        "Which row is the shape in? Rows are numbered 1 to 3 from the top.",
        "Which row holds the object (1 = top, 2 = middle, 3 = bottom)?",
        "Name the row of the shape.",
        "In what row, counted from the top, is the object drawn?",
        "Which of the three rows contains the shape?",
    ),
    "column": (
        "In which column is the object?",
        "Which column is the shape in? Columns are numbered 1 to 3 from the left.",
        "Which column holds the object (1 = left, 2 = middle, 3 = right)?",
        "Name the column of the shape.",
        "In what column, counted from the left, is the object drawn?",
        "Which of the three columns contains the shape?",
    ),
}
"""Precise instructions the micro-VLM is trained on."""

HELD_OUT: dict[str, tuple[str, ...]] = {
    "row": ("Say which row the object sits in.",),
    "column": ("Say which column the object sits in.",),
}
"""Precise instructions never seen in training (new sentences, same key words)."""

VAGUE: tuple[str, ...] = (
    "Describe the image.",
    "What do you see?",
    "Answer the question about the image.",
    "Look at the picture and give the answer.",
    "Classify the image into exactly one of the allowed labels.",  # the signature's default instruction
)
"""Instructions that do not say which attribute is meant; trained with either attribute at random."""

VAGUE_HELD_OUT: tuple[str, ...] = ("What is this?",)

IMAGE_DESCRIPTIONS: tuple[str | None, ...] = (
    None,  # the signature's default image description
    "The image.",
    "A drawing of simple shapes on a grid.",
    "The picture to look at.",
)
"""What programs put in the image field's description (``TaskSpec.user_prompt``)."""

SYSTEM_FRAMES: tuple[str | None, ...] = (
    None,  # the signature's default instruction
    "You look at simple drawings of shapes.",
    "You are a careful visual assistant.",
)
"""Generic system prompts, used when the question goes in the image description instead."""


def draw_scene(rng: random.Random, *, row: int | None = None, column: int | None = None
               ) -> tuple[Image.Image, dict[str, str]]:
    """One image and its answers per attribute; unspecified values are drawn with ``row != column``."""
    cells = [(r, c) for r in range(1, GRID + 1) for c in range(1, GRID + 1) if r != c
             and row in (None, r) and column in (None, c)]
    if not cells:
        raise ValueError(f"no scene has row={row} and column={column} (they must differ, each in 1..{GRID})")
    row, column = rng.choice(cells)
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), tuple(rng.randint(225, 255) for _ in range(3)))
    cell = IMAGE_SIDE / GRID
    side = rng.uniform(*OBJECT_SIDE)
    x0 = (column - 1) * cell + rng.uniform(1, cell - side - 1)  # 1 px margin: edges round outwards
    y0 = (row - 1) * cell + rng.uniform(1, cell - side - 1)
    colour = tuple(rng.randint(0, 170) for _ in range(3))
    SHAPES[rng.choice(_SHAPE_NAMES)](ImageDraw.Draw(image), (x0, y0, x0 + side, y0 + side), colour)
    return image, {"row": str(row), "column": str(column)}


def eval_scenes(n: int, seed: int) -> list[tuple[Image.Image, dict[str, str]]]:
    """A fixed, seeded evaluation set (independent of the training stream for any seed)."""
    rng = random.Random(f"micro-eval:{seed}")
    return [draw_scene(rng) for _ in range(n)]


def write_micro_task_dataset(out_dir: str | Path, *, attribute: str = "row", n_per_class: int = 20,
                             seed: int = 0) -> Path:
    """Write an image folder ``out_dir/<label>/<label>_NNN.png`` labelled by ``attribute``; return it.

    Classes are balanced; the other attribute is drawn at random (never equal to the label).
    """
    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; valid: {', '.join(ATTRIBUTES)}")
    root = Path(out_dir)
    for label in LABELS:
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            image, _ = draw_scene(random.Random(f"micro-data:{seed}:{attribute}:{label}:{i}"),
                                  **{attribute: int(label)})
            image.save(root / label / f"{label}_{i:03d}.png")
    return root


def corpus() -> list[str]:
    """Training text for the tokenizer; held-out phrasings stay out (no token only they would use)."""
    texts = [*VAGUE, *(t for t in IMAGE_DESCRIPTIONS + SYSTEM_FRAMES if t)]
    for attribute in ATTRIBUTES:
        texts += TRAIN[attribute]
    return texts + [f'{{"label":"{label}"}}' for label in LABELS]
