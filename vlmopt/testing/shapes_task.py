"""The micro-VLM's synthetic task: small shapes stacked in one column of a 3x3 grid.

Every image answers two questions with the SAME label set ``"1" "2" "3"``: how many objects
there are (``count``) and which column, from the left, they stand in (``column``). The count
never equals the column, so an answer to the wrong question is always wrong. A closed label
set therefore cannot rescue a vague prompt: only the instruction (or demos labelled by one
attribute) says which question is asked. That makes the prompt measurably matter, which is what
the prompt optimizer's tests and the offline demo need.

The instruction lists are part of the task: the micro-VLM is trained on ``TRAIN`` phrasings and
``VAGUE`` ones (answered with either attribute at random), and evaluated on those plus the
``HELD_OUT`` phrasings it never saw.

Example::

    image, answers = draw_scene(random.Random(0))      # answers == {"count": "2", "column": "3"}
    write_micro_task_dataset("/tmp/count", attribute="count", n_per_class=20)
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

from vlmopt.testing.images import SHAPES

LABELS = ("1", "2", "3")
ATTRIBUTES = ("count", "column")
IMAGE_SIDE = 64
GRID = 3
OBJECT_SIDE = (12, 18)
"""Object side in px; a grid cell is 64 / 3 ~ 21 px, so objects never touch."""
_SHAPE_NAMES = ("circle", "square", "triangle", "diamond")

TRAIN: dict[str, tuple[str, ...]] = {
    "count": (
        "How many objects are there?",
        "Count the objects in the image.",
        "How many shapes are in the picture?",
        "Count the shapes and answer with the number.",
        "What is the number of objects in the image?",
        "How many things are drawn?",
    ),
    "column": (
        "In which column is the object?",
        "Which column are the shapes in? Columns are numbered 1 to 3 from the left.",
        "Which column holds the objects (1 = left, 2 = middle, 3 = right)?",
        "Name the column of the shapes.",
        "In what column, counted from the left, are the objects drawn?",
        "Which of the three columns contains the shapes?",
    ),
}
"""Precise instructions the micro-VLM is trained on."""

HELD_OUT: dict[str, tuple[str, ...]] = {
    "count": ("Tell me how many objects the picture shows.",),
    "column": ("Say which column the objects stand in.",),
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


def draw_scene(rng: random.Random, *, count: int | None = None, column: int | None = None
               ) -> tuple[Image.Image, dict[str, str]]:
    """One image and its answers per attribute; unspecified values are drawn with ``count != column``."""
    pairs = [(k, c) for k in range(1, GRID + 1) for c in range(1, GRID + 1) if k != c
             and count in (None, k) and column in (None, c)]
    if not pairs:
        raise ValueError(f"no scene has count={count} and column={column} (they must differ, each in 1..{GRID})")
    count, column = rng.choice(pairs)
    image = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), tuple(rng.randint(225, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    cell = IMAGE_SIDE / GRID
    for row in sorted(rng.sample(range(GRID), count)):
        side = rng.uniform(*OBJECT_SIDE)
        x0 = (column - 1) * cell + rng.uniform(0, cell - side)
        y0 = row * cell + rng.uniform(0, cell - side)
        colour = tuple(rng.randint(0, 170) for _ in range(3))
        SHAPES[rng.choice(_SHAPE_NAMES)](draw, (x0, y0, x0 + side, y0 + side), colour)
    return image, {"count": str(count), "column": str(column)}


def eval_scenes(n: int, seed: int) -> list[tuple[Image.Image, dict[str, str]]]:
    """A fixed, seeded evaluation set (independent of the training stream for any seed)."""
    rng = random.Random(f"micro-eval:{seed}")
    return [draw_scene(rng) for _ in range(n)]


def write_micro_task_dataset(out_dir: str | Path, *, attribute: str = "count", n_per_class: int = 20,
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
