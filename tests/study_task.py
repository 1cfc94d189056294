"""The colour task for the optimize, calibration and outer-study tests: image folder, config and
a scripted VLM whose accuracy and answer length depend on the searched choices.

The scripted model (a test double at the model edge, see ``vlmopt.testing.scripted_engine``)
answers in whatever format the request asks for — JSON under a response_format, DSPy's
``[[ ## field ## ]]`` chat format, or a bare label — so every framing in the search space runs
through the real adapters. Its behaviour gives the search something to find:

* images smaller than 24 px are unreadable: always "cat";
* with reasoning it reads every colour right, and writes ~13 more words (tokens);
* under the GOOD instruction, or with demos, it knows red and blue but calls green "cat";
* otherwise it always says "cat".

Each query's pixel colour is unique per image, so a test can tell which images the model saw.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from PIL import Image

from vlmopt.config import TaskConfig, parse_config

COLOURS = {"cat": (220, 30, 30), "dog": (30, 30, 220), "bird": (30, 200, 30)}
GOOD = "Look at the colour: red is cat, blue is dog, green is bird."
VAGUE = "Answer with any label."
PER_CLASS = 8


def make_colour_folder(root: Path, per_class: int = PER_CLASS, step: int = 3) -> Path:
    """Solid-colour 32x32 PNGs in class folders; image i of a class is its colour plus ``step * i``."""
    for label, rgb in COLOURS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), shade(rgb, i, step)).save(root / label / f"{label}_{i:02d}.png")
    return root


def shade(rgb: tuple[int, int, int], i: int, step: int = 3) -> tuple[int, int, int]:
    return tuple(min(255, c + step * i) for c in rgb)


def centre(image: Image.Image) -> tuple[int, int, int]:
    return image.convert("RGB").getpixel((image.width // 2, image.height // 2))


def colour_of(image: Image.Image) -> str:
    rgb = centre(image)
    return min(COLOURS, key=lambda k: sum(abs(x - y) for x, y in zip(COLOURS[k], rgb, strict=True)))


def study_config(folder: Path, workdir: Path, *, seed: int = 5, **optimizer) -> TaskConfig:
    return parse_config(
        {
            "name": "colours",
            "seed": seed,
            "model": {"id": "scripted"},
            "dataset": {"source": str(folder), "kind": "imagefolder", "max_image_side": 32},
            "task": {"labels": ["cat", "dog", "bird"], "system_prompt": "Classify the animal.",
                     "user_prompt": "Which animal is this?"},
            "optimizer": {"auto": None, "num_candidates": 3, "num_trials": 4, "max_bootstrapped_demos": 1,
                          "max_labeled_demos": 2, "minibatch": False, "prompt_model": "none",
                          "instructions": [VAGUE, GOOD], **optimizer},
            "run": {"output_dir": str(workdir / "runs"), "cache_dir": str(workdir / "cache"), "num_threads": 2},
        }
    )


class StudyVLM:
    """The scripted answer function; records the centre colour of every query image it is shown."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.seen: list[tuple[int, int, int]] = []

    def __call__(self, call) -> str:
        if self.delay_s:
            time.sleep(self.delay_s)
        image = call.query_image
        self.seen.append(centre(image))
        truth = colour_of(image)
        fmt, wants_reasoning = _format(call)
        if max(image.size) < 24:
            label = "cat"
        elif wants_reasoning:
            label = truth
        elif GOOD in call.system or call.n_demos:
            label = truth if truth != "bird" else "cat"
        else:
            label = "cat"
        reasoning = f"The centre of the image is {truth_name(truth)}, so by its colour the animal is {label}."
        if fmt == "json":
            return json.dumps({"reasoning": reasoning, "label": label} if wants_reasoning else {"label": label})
        if fmt == "chat":
            head = f"[[ ## reasoning ## ]]\n{reasoning}\n\n" if wants_reasoning else ""
            return f"{head}[[ ## label ## ]]\n{label}\n\n[[ ## completed ## ]]"
        return label


def truth_name(label: str) -> str:
    return {"cat": "red", "dog": "blue", "bird": "green"}[label]


def _format(call) -> tuple[str, bool]:
    """(json | chat | bare, asked to reason): read from the schema, DSPy's chat framing or the demos."""
    if call.response_format is not None:
        return "json", '"reasoning"' in json.dumps(call.response_format)
    if "[[ ## completed ## ]]" in call.system:
        return "chat", "[[ ## reasoning ## ]]" in call.system
    demo_answers = [text for role, text, _ in call.turns if role == "assistant"]
    if demo_answers and demo_answers[0].lstrip().startswith("{"):
        return "json", "reasoning" in demo_answers[0]
    return "bare", False
