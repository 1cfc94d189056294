"""Engine throughput: is micro-batching worth it, what does DSPy cost, what does the grammar cost?

* **P1** images/s: ``dspy.Evaluate(num_threads=T)`` through the engine vs a plain loop calling
  ``model.generate`` one image at a time (same prompt, same token budget).
* **P2** the engine's overhead: the same DSPy path vs one raw batched ``generate`` over all
  images at the engine's batch size (what the engine could do at best).
* **P3** constrained vs free decoding: the engine with ``structured=True`` vs ``structured=False``
  on a multi-label signature. Free decoding of a random model never stops before the budget while
  the grammar closes the JSON early, so the like-for-like figures give free decoding a budget of
  the constrained answers' mean length (same tokens generated), and of the constrained batches'
  mean decode steps (``generate`` steps a batch until its longest answer closes, so a batch of
  constrained answers of 8-16 tokens costs 16 steps: same decode work, the grammar's own cost).

Not a test: numbers depend on the machine. Run on the serving host and report the device::

    python bench/p1_p2_p3_engine.py --model /models/LFM2-VL-450M --images 64 --threads 8
    python bench/p1_p2_p3_engine.py --bench-model --images 16   # offline: 65 M-param random Idefics3
    python bench/p1_p2_p3_engine.py --tiny lfm2_vl   # offline smoke run on a random tiny VLM
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Literal

import dspy
import torch
from PIL import Image

from vlmopt.datasets.images import to_dspy_image
from vlmopt.serving.chat_inputs import chat_input_from_request
from vlmopt.serving.transformers_engine import create_lm
from vlmopt.testing.bench_vlm import build_bench_idefics3
from vlmopt.testing.tiny_vlm import build_tiny_vlm


class Animal(dspy.Signature):
    """Classify the animal in the image."""

    image: dspy.Image = dspy.InputField()
    label: Literal["cat", "dog", "bird", "horse"] = dspy.OutputField()


class Animals(dspy.Signature):
    """List every animal in the image."""

    image: dspy.Image = dspy.InputField()
    label: list[Literal["cat", "dog", "bird", "horse"]] = dspy.OutputField()


def synthetic_images(count: int) -> list[Image.Image]:
    """Distinct solid colours: decoding cost is what we measure, not the content."""
    return [Image.new("RGB", (224, 224), ((37 * i) % 256, (91 * i) % 256, (151 * i) % 256)) for i in range(count)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def through_dspy(lm: dspy.LM, signature, images: list[Image.Image], threads: int) -> float:
    """Images per second; ``lm.engine.stats.completion_tokens`` / ``decode_steps`` grow by what was generated."""
    devset = [dspy.Example(image=to_dspy_image(img), label="cat").with_inputs("image") for img in images]
    evaluate = dspy.Evaluate(devset=devset, metric=lambda ex, pred, trace=None: True, num_threads=threads,
                             display_progress=False, max_errors=len(devset) + 1)  # free text may not parse
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        return len(images) / timed(lambda: evaluate(dspy.Predict(signature)))


def first_prompt(lm: dspy.LM, images: list[Image.Image]) -> str:
    """The exact chat prompt the adapter produced for image 0 (reused by the raw baselines)."""
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        dspy.Predict(Animal)(image=to_dspy_image(images[0]))
    request = dspy.lm15.request_from_openai_chat({"model": lm.model, "messages": lm.history[-1]["messages"]})
    return lm.engine.render_prompt(chat_input_from_request(request))


@torch.inference_mode()
def raw_generate(engine, prompt: str, images: list[Image.Image], batch_size: int, max_new_tokens: int) -> float:
    def run():
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = engine.processor(text=[prompt] * len(chunk), images=[[img] for img in chunk], padding=True,
                                     return_tensors="pt").to(engine.device)
            engine.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=engine.pad_token_id)
    return len(images) / timed(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="hub id or local checkpoint directory")
    source.add_argument("--tiny", choices=["lfm2_vl", "idefics3"], help="build a random tiny VLM and use it")
    source.add_argument("--bench-model", action="store_true",
                        help="build the 65 M-parameter bench Idefics3 (the model, not Python, dominates)")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.bench_model:
        model = str(build_bench_idefics3(Path(tempfile.mkdtemp(prefix="bench-model-"))))
    else:
        model = args.model or str(build_tiny_vlm(args.tiny, tempfile.mkdtemp(prefix="bench-tiny-")))
    images = synthetic_images(args.images)
    common = {"max_new_tokens": args.max_new_tokens, "max_batch_size": args.threads, "device": args.device,
              "cache": False}
    lm = create_lm(model, **common)
    free = create_lm(model, structured=False, **common)
    prompt = first_prompt(lm, images)
    through_dspy(lm, Animals, images[: args.threads], args.threads)  # warm-up: kernels, grammar compile
    report = {
        "model": lm.model, "device": str(lm.engine.device), "images": args.images, "threads": args.threads,
        "P1_engine_evaluate_classify_img_s": through_dspy(lm, Animal, images, args.threads),
    }
    stats = lm.engine.stats
    tokens_before, steps_before, calls_before = stats.completion_tokens, stats.decode_steps, stats.generate_calls
    report["P1_engine_evaluate_multilabel_img_s"] = through_dspy(lm, Animals, images, args.threads)
    constrained_tokens = (stats.completion_tokens - tokens_before) / len(images)
    steps_per_batch = (stats.decode_steps - steps_before) / (stats.generate_calls - calls_before)
    # a constrained batch steps until its longest answer closes: free decoding at that many steps per batch
    # does the same decode work, so the wall ratio is the grammar's own cost
    same_steps = create_lm(model, **{**common, "max_new_tokens": max(1, round(steps_per_batch))}, structured=False)
    same_budget = create_lm(model, **{**common, "max_new_tokens": max(1, round(constrained_tokens))},
                            structured=False)
    report |= {
        "P1_plain_loop_generate_img_s": raw_generate(lm.engine, prompt, images, 1, args.max_new_tokens),
        "P2_raw_batched_generate_img_s": raw_generate(lm.engine, prompt, images, args.threads, args.max_new_tokens),
        "P3_free_multilabel_img_s": through_dspy(free, Animals, images, args.threads),
        "P3_free_same_tokens_img_s": through_dspy(same_budget, Animals, images, args.threads),
        "P3_tokens_per_image": {"constrained": constrained_tokens,
                                "free": free.engine.stats.completion_tokens / len(images),
                                "free_same_tokens": same_budget.engine.stats.completion_tokens / len(images)},
        "P3_free_same_steps_img_s": through_dspy(same_steps, Animals, images, args.threads),
        "P3_decode_steps_per_batch": {"constrained": steps_per_batch,
                                      "free_same_tokens": same_budget.engine.stats.decode_steps
                                      / same_budget.engine.stats.generate_calls},
        "engine_batch_histogram": lm.engine.stats.batches.histogram(),
    }
    report["ratios"] = {
        "P1_evaluate_vs_plain_loop (target >= 3)": report["P1_engine_evaluate_classify_img_s"]
        / report["P1_plain_loop_generate_img_s"],
        "P2_engine_wall_vs_raw_batched (target <= 1.15)": report["P2_raw_batched_generate_img_s"]
        / report["P3_free_multilabel_img_s"],
        "P3_constrained_wall_vs_free (target <= 1.10)": report["P3_free_multilabel_img_s"]
        / report["P1_engine_evaluate_multilabel_img_s"],
        "P3_constrained_vs_free_same_tokens (target <= 1.10)": report["P3_free_same_tokens_img_s"]
        / report["P1_engine_evaluate_multilabel_img_s"],
        "P3_constrained_vs_free_same_steps_per_batch": report["P3_free_same_steps_img_s"]
        / report["P1_engine_evaluate_multilabel_img_s"],
    }
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    print(json.dumps(report, indent=2))
    for engine in (lm.engine, free.engine, same_budget.engine, same_steps.engine):
        engine.close()


if __name__ == "__main__":
    main()
