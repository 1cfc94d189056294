"""Filled shapes drawn on a PIL canvas: the classes of the demo's task and of the synthetic test sets.

Each entry draws one shape inside a box ``(x0, y0, x1, y1)`` in one colour; the demo's grid task
(:mod:`vlmopt.demo.shapes_task`) and the test image sets (``vlmopt.testing.images``) both draw
from here, so a shape looks the same wherever it is asked for.

Example::

    SHAPES["triangle"](ImageDraw.Draw(image), (4, 4, 20, 20), (220, 40, 40))
"""

from __future__ import annotations

from collections.abc import Callable

from PIL import ImageDraw

Box = tuple[float, float, float, float]


def _polygon(points: Callable[[Box], list[tuple[float, float]]]) -> Callable[[ImageDraw.ImageDraw, Box, tuple], None]:
    return lambda draw, box, fill: draw.polygon(points(box), fill=fill)


def _ring(draw: ImageDraw.ImageDraw, box: Box, fill: tuple) -> None:
    draw.ellipse(box, outline=fill, width=max(2, int((box[2] - box[0]) / 6)))


def _cross(draw: ImageDraw.ImageDraw, box: Box, fill: tuple) -> None:
    x0, y0, x1, y1 = box
    w, h = (x1 - x0) / 3, (y1 - y0) / 3
    draw.rectangle((x0 + w, y0, x1 - w, y1), fill=fill)
    draw.rectangle((x0, y0 + h, x1, y1 - h), fill=fill)


SHAPES: dict[str, Callable[[ImageDraw.ImageDraw, Box, tuple], None]] = {
    "circle": lambda draw, box, fill: draw.ellipse(box, fill=fill),
    "square": lambda draw, box, fill: draw.rectangle(box, fill=fill),
    "triangle": _polygon(lambda b: [((b[0] + b[2]) / 2, b[1]), (b[2], b[3]), (b[0], b[3])]),
    "diamond": _polygon(
        lambda b: [
            ((b[0] + b[2]) / 2, b[1]),
            (b[2], (b[1] + b[3]) / 2),
            ((b[0] + b[2]) / 2, b[3]),
            (b[0], (b[1] + b[3]) / 2),
        ]
    ),
    "cross": _cross,
    "ring": _ring,
}
