"""Measure the micro-VLM the way users run it, and write its model card from the measurements.

Every figure goes through the real stack: ``create_lm(model_dir)`` (the in-process engine; with
structured generation a single-enum schema is answered by label scoring, i.e. the grammar's
closed set), a program from ``create_program(TaskSpec(...))`` with the compact adapter, and
``dspy.Evaluate`` over a fixed seeded image set. Nothing here knows how the model was trained.

Example::

    results = evaluate_micro_vlm(micro_vlm_dir(), n=60, seed=1, cases=headline_cases())
    {r["name"]: r["accuracy"] for r in results}
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import dspy

from vlmopt.config import TaskSpec
from vlmopt.demo import shapes_task
from vlmopt.metrics.dspy_metrics import label_accuracy
from vlmopt.programs import create_program
from vlmopt.serving.transformers_engine import create_lm

TRAIN_COMMAND = "python -m vlmopt.demo.micro_vlm --out vlmopt/demo/assets/micro_vlm --seed 0"
N_DEMOS = 2


@dataclass(frozen=True)
class Case:
    """One prompt setting, scored against one attribute's answers."""

    name: str
    kind: str  # precise | held_out | vague | vague_held_out | in_description | demos_precise | demos_vague
    attribute: str  # whose answers are gold
    system_prompt: str | None
    user_prompt: str | None = None
    n_demos: int = 0
    structured: bool = True


def headline_cases() -> list[Case]:
    """First trained phrasing, held-out phrasing and first vague phrasing, per attribute (structured)."""
    cases = []
    for attribute in shapes_task.ATTRIBUTES:
        cases += [Case(f"precise/{attribute}", "precise", attribute, shapes_task.TRAIN[attribute][0]),
                  Case(f"held_out/{attribute}", "held_out", attribute, shapes_task.HELD_OUT[attribute][0]),
                  Case(f"vague/{attribute}", "vague", attribute, shapes_task.VAGUE[0])]
    return cases


def card_cases() -> list[Case]:
    """Everything the card reports: every phrasing, both slots, demos, and free-text decoding."""
    cases = []
    for attribute in shapes_task.ATTRIBUTES:
        cases += [Case(f"precise/{attribute}/{i}", "precise", attribute, text)
                  for i, text in enumerate(shapes_task.TRAIN[attribute])]
        cases += [Case(f"held_out/{attribute}/{i}", "held_out", attribute, text)
                  for i, text in enumerate(shapes_task.HELD_OUT[attribute])]
        cases += [Case(f"vague/{attribute}/{i}", "vague", attribute, text)
                  for i, text in enumerate(shapes_task.VAGUE)]
        cases += [Case(f"vague_held_out/{attribute}/{i}", "vague_held_out", attribute, text)
                  for i, text in enumerate(shapes_task.VAGUE_HELD_OUT)]
        cases.append(Case(f"in_description/{attribute}", "in_description", attribute, None,
                          user_prompt=shapes_task.TRAIN[attribute][0]))
        cases.append(Case(f"demos/precise/{attribute}", "demos_precise", attribute, shapes_task.TRAIN[attribute][0],
                          n_demos=N_DEMOS))
        cases.append(Case(f"demos/vague/{attribute}", "demos_vague", attribute, shapes_task.VAGUE[0],
                          n_demos=N_DEMOS))
        # Free text: bare-label demos show the form (without demos the model writes the JSON it mostly saw).
        cases += [Case(f"free_text/{c.name}", c.kind, attribute, c.system_prompt, n_demos=N_DEMOS, structured=False)
                  for c in headline_cases() if c.attribute == attribute and c.kind != "held_out"]
    return cases


def _devset(scenes, attribute: str) -> list[dspy.Example]:
    return [dspy.Example(image=image, label=answers[attribute]).with_inputs("image") for image, answers in scenes]


def evaluate_case(lm: dspy.LM, case: Case, scenes, demo_scenes, *, num_threads: int = 16) -> dict:
    """Accuracy and invalid-answer rate of one case on ``scenes`` ((dspy.Image, answers) pairs)."""
    task = TaskSpec(labels=list(shapes_task.LABELS), system_prompt=case.system_prompt,
                    user_prompt=case.user_prompt, structured_generation=case.structured)
    program = create_program(task)
    program.predict.demos = _devset(demo_scenes[:case.n_demos], case.attribute)
    with dspy.context(lm=lm):
        outcome = dspy.Evaluate(devset=_devset(scenes, case.attribute), metric=label_accuracy,
                                num_threads=num_threads, display_progress=False)(program)
    invalid = sum(1 for _, pred, _ in outcome.results if not pred.get("valid", False))
    return {**asdict(case), "n": len(scenes), "accuracy": round(outcome.score / 100, 4),
            "invalid_rate": round(invalid / len(scenes), 4)}


def evaluate_micro_vlm(model_dir: str | Path, *, n: int = 300, seed: int = 0,
                       cases: list[Case] | None = None) -> list[dict]:
    """Evaluate ``cases`` (default: the card's) on ``n`` seeded scenes through the in-process engine."""
    cases = card_cases() if cases is None else cases
    scenes = [(dspy.Image(image), answers) for image, answers in shapes_task.eval_scenes(n, seed)]
    demo_rng = random.Random(f"micro-demos:{seed}")
    demo_scenes = [(dspy.Image(image), answers) for image, answers in
                   (shapes_task.draw_scene(demo_rng) for _ in range(N_DEMOS))]
    lms = {structured: create_lm(str(model_dir), structured=structured, max_new_tokens=8, max_batch_size=16,
                                 cache=False)
           for structured in {case.structured for case in cases}}
    try:
        return [evaluate_case(lms[case.structured], case, scenes, demo_scenes) for case in cases]
    finally:
        for lm in lms.values():
            lm.engine.close()


def summarize(results: list[dict]) -> dict[str, float]:
    """Mean accuracy per (structured, kind, attribute): the card's headline rows and the test's targets."""
    groups: dict[str, list[float]] = {}
    for row in results:
        prefix = "" if row["structured"] else "free_text/"
        groups.setdefault(f"{prefix}{row['kind']}/{row['attribute']}", []).append(row["accuracy"])
    return {key: round(sum(values) / len(values), 4) for key, values in groups.items()}


_CARD = """\
# micro-VLM (vlmopt test fixture)

A {parameters:,}-parameter Idefics3 (SmolVLM architecture: SigLIP-style vision tower, pixel-shuffle
connector, Llama text model) **trained from scratch by this project on synthetic drawings**, for
tests and the offline demo only. It is not a vision model for real images and knows nothing
beyond the task below.

## Task (`vlmopt/demo/shapes_task.py`)
64x64 images with one small shape in a cell of a 3x3 grid. Two questions share the labels
`"1" "2" "3"`: *which row from the top* (`row`) and *which column from the left* (`column`);
the row never equals the column. Trained prompts are rendered exactly as the
project's programs render them (`make_signature` + `CompactAdapter` + the chat template):
precise instructions answered by their attribute; vague ones ("Describe the image.") answered
by both attributes, half-half (or, with demos, by the attribute the demos are labelled with); the answer is
compact JSON `{{"label":"2"}}`, or the bare label in a share of the prompts with demos (their
bare-label demos show free-text decoding's form).

## Training
Command: `{command}`
Seed {seed}; {steps} steps of batch {batch_size} on {threads} CPU thread(s); {train_seconds:.0f} s of
training on a 2-core machine shared with other jobs (final loss {final_loss}). Deterministic for a
given seed and thread count.

## Accuracy
Measured through `create_lm(dir)` (in-process engine) and `create_program(TaskSpec(...))`,
`dspy.Evaluate`, on {n} seeded scenes (`shapes_task.eval_scenes({n}, seed={eval_seed})`).
Structured rows use the grammar's closed label set (label scoring); free-text rows parse the
generated text (an answer outside the labels is invalid); they carry two bare-label demos.
Chance is 33%; answering the other attribute is always wrong, so a model that picks one of the
two at random scores 50%.

| case | kind | gold | structured | accuracy | invalid | instruction (system) / image description |
|---|---|---|---|---|---|---|
{rows}

Mean per kind: {summary}

## Limits (see the rows above)
- Demos do not stand in for the instruction: with a vague instruction and two demos labelled by
  one attribute (`demos/vague/*`) the model stays near 50%; it has not learned in context which
  question the demos answer. With a precise instruction demos do no harm.
- Free-text decoding is weaker and leans to the row answer: bare-label answers were a small
  share of training, always after bare-label demos. Without demos the model writes the JSON
  form, which the free-text parser rejects (measured: 100% invalid on 30 scenes).
- Held-out phrasings are new sentences around the trained key words ("row", "column"); an
  instruction without them is, to this model, vague.
"""


def _prompt_text(row: dict) -> str:
    text = row["system_prompt"] or "(default instruction)"
    if row["user_prompt"]:
        text += f" / {row['user_prompt']}"
    return text + (f" + {row['n_demos']} demos" if row["n_demos"] else "")


def write_model_card(out_dir: str | Path, training: dict, results: list[dict], *, eval_seed: int = 0) -> Path:
    """Write ``metrics.json`` (what tests compare against) and ``MODEL_CARD.md`` from the same numbers."""
    out_dir = Path(out_dir)
    n = results[0]["n"]
    metrics = {"training": training, "eval": {"n": n, "seed": eval_seed, "summary": summarize(results),
                                              "results": results}}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n", encoding="utf-8")
    rows = "\n".join(
        f"| {r['name']} | {r['kind']} | {r['attribute']} | {'yes' if r['structured'] else 'no'} | "
        f"{r['accuracy']:.1%} | {r['invalid_rate']:.1%} | {_prompt_text(r)} |" for r in results)
    summary = ", ".join(f"{key} {value:.1%}" for key, value in metrics["eval"]["summary"].items())
    card = _CARD.format(command=TRAIN_COMMAND, n=n, eval_seed=eval_seed, rows=rows, summary=summary, **training)
    path = out_dir / "MODEL_CARD.md"
    path.write_text(card, encoding="utf-8")
    return path
