"""The scripted task VLM and scripted writer the search-method tests share (test doubles at the model edge).

The task model (see ``study_task`` for the colour images) answers in JSON:

* under the GOOD instruction it reads every colour right;
* with demos it knows red and blue, and writes "pug" (not a label: an invalid answer) for green;
* otherwise it knows red only: blue is called "cat" (a confused pair), green "pug";
* sampled at a temperature above 0 (SIMBA's trajectories), every second answer per colour is right,
  so samples disagree and SIMBA has something to write a rule about.

The writer proposes GOOD only when its prompt carries the feedback metric's words for a
confusion or an invalid answer; otherwise a vague instruction. Asked for SIMBA's advice, it
advises GOOD for the program's one module.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

from study_task import GOOD, colour_of
from vlmopt.testing.scripted_writer import ScriptedWriter, call_text

VAGUE_PROPOSAL = "Name the animal in the picture."


class MethodVLM:
    def __init__(self) -> None:
        self.samples: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, call) -> str:
        truth = colour_of(call.query_image)
        if GOOD in call.system:
            label = truth
        elif call.n_demos:
            label = truth if truth != "bird" else "pug"
        else:
            label = {"cat": "cat", "dog": "cat", "bird": "pug"}[truth]
        if call.temperature:
            with self._lock:
                self.samples[truth] += 1
                label = truth if self.samples[truth] % 2 else label
        return label if label == "pug" else json.dumps({"label": label})


def learns_from_feedback(call, fields: list[str]) -> dict:
    text = call_text(call)
    taught = "confused" in text or "Invalid output" in text
    answers = {}
    for name in fields:
        if name == "module_advice":
            answers[name] = {"predict": GOOD if taught else VAGUE_PROPOSAL}
        elif "instruction" in name:
            answers[name] = GOOD if taught else VAGUE_PROPOSAL
        else:
            answers[name] = "The worse trajectory misread the colour."
    return answers


def feedback_writer() -> ScriptedWriter:
    return ScriptedWriter(learns_from_feedback)
