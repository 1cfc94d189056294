"""P9: what few-shot image demos cost the in-process engine, with and without shared-prefix reuse.

The same ``Classify`` program with 0 and with 4 image demos, over the same query images, on one
engine per setting: ``prefix_cache_mb=0`` (every prompt run whole, as before reuse) and the
default (the program's system prompt, instruction and demos run once, each query on top; see
``vlmopt.serving.prefix_cache``). The demo cost is img/s(0 demos) / img/s(4 demos); the goal is
<= 1.3 (vLLM's prefix cache: 0.98). The prefix-cache counters of each run are printed too, and the
few-shot run with reuse once more in each of ``--compare-dtypes`` (is the CPU default, float32, the
fastest here?).

The model is the bench Idefics3 (``vlmopt.testing.bench_vlm``, ~65 M parameters, 64 image tokens at
256 px). Not a test: the figures depend on the machine and its load (printed).

    python bench/p9_demo_cost.py                       # 24 images, 8 threads
    python bench/p9_demo_cost.py --model /models/SmolVLM-256M-Instruct --images 64
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from shapes_bench import bench_images, images_per_s, program_with_demos

from vlmopt.serving.transformers_engine import create_lm
from vlmopt.testing.bench_vlm import build_bench_idefics3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local checkpoint directory (default: build the bench Idefics3)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--image-side", type=int, default=256)
    parser.add_argument("--demos", type=int, default=4)
    parser.add_argument("--compare-dtypes", nargs="*", default=["bfloat16"],
                        help="also run reuse on, with demos, in these dtypes (the default dtype runs above)")
    args = parser.parse_args()

    model = args.model or str(build_bench_idefics3(Path(tempfile.mkdtemp(prefix="p9-model-"))))
    examples = bench_images(args.images, args.image_side)
    warm = bench_images(args.threads, args.image_side, seed="warm")
    report: dict = {"machine": {"cores": os.cpu_count(), "load_avg_at_start": os.getloadavg(),
                                "torch_threads": torch.get_num_threads()},
                    "settings": vars(args) | {"model": model}, "images_per_s": {}, "prefix_cache": {}}
    for reuse, budget in (("off", 0), ("on", None)):
        lm = create_lm(model, max_batch_size=args.threads, cache=False,
                       **({"prefix_cache_mb": budget} if budget is not None else {}))
        for demos in (0, args.demos):
            program = program_with_demos(demos, args.image_side)
            images_per_s(lm, program, warm, args.threads)  # the first batch pays for the prefix and warm-up
            name = f"reuse_{reuse}_{demos}_demos"
            report["images_per_s"][name] = round(images_per_s(lm, program, examples, args.threads), 2)
            if lm.engine.prefixes is not None:  # counters since the engine started: this run and the ones before
                stats = lm.engine.prefixes.stats
                report["prefix_cache"][name] = {"hits": stats.hits, "misses": stats.misses,
                                                "refused": stats.refused, "tokens_reused": stats.tokens_reused}
        lm.engine.close()
    for dtype in args.compare_dtypes:  # the CPU default is float32: is another dtype faster here?
        lm = create_lm(model, dtype=dtype, max_batch_size=args.threads, cache=False)
        program = program_with_demos(args.demos, args.image_side)
        images_per_s(lm, program, warm, args.threads)
        report["images_per_s"][f"reuse_on_{args.demos}_demos_{dtype}"] = round(
            images_per_s(lm, program, examples, args.threads), 2)
        lm.engine.close()
    rates = report["images_per_s"]
    report["demo_cost (img/s 0 demos / img/s 4 demos)"] = {
        reuse: round(rates[f"reuse_{reuse}_0_demos"] / rates[f"reuse_{reuse}_{args.demos}_demos"], 2)
        for reuse in ("off", "on")}
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
