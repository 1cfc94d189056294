"""P7: images/s of the in-process engine vs the vLLM (CPU) server: same model, same prompts, same threads.

Both run the same ``Classify`` program (single label, 3 classes), zero-shot and with ``--demos``
image demos (what an optimized program carries), through ``evaluate_program`` over the same images:

* **in-process** — the transformers engine (micro-batching); for a classifier it *scores* every
  label in one batched forward pass and answers with the most likely one, probabilities included;
  a program's shared prefix (instruction, demos) runs once (``serving.prefix_cache``);
* **vLLM** — ``create_openai_lm`` on a local vLLM server: grammar-constrained generation with
  continuous batching and prefix caching, answer only;
* **vLLM + probabilities** — ``create_vllm_lm``: the same generation plus one 1-token request per
  node of the labels' token trie (``logprob_token_ids``), i.e. the same output as the in-process
  engine (P10 measures what that costs).

The model is a random-weight Idefics3 (SmolVLM layout) large enough that the model, not Python,
dominates: by default a 768-wide, 8-layer Llama text model and a 384-wide, 6-layer SigLIP tower on
256 px images (64 image tokens, as SmolVLM at 512 px) — about 70 M parameters. Built offline from
the tiny fixture's tokenizer and processor (``build_bench_idefics3``), so vLLM and transformers
load the very same checkpoint. vLLM serves it in bfloat16; the in-process engine in its default
dtype (``--dtype``).

Not a test: numbers depend on the machine (and on what else runs on it: the load average is
printed). Run on the serving host::

    python bench/p7_backends.py                       # builds the bench model in a temp dir
    python bench/p7_backends.py --model /models/SmolVLM-256M-Instruct --images 64 --threads 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import torch
from shapes_bench import bench_images, images_per_s, program_with_demos  # bench/ is on sys.path

from vlmopt.serving.openai_lm import create_openai_lm
from vlmopt.serving.transformers_engine import create_lm
from vlmopt.serving.vllm_probabilities import create_vllm_lm
from vlmopt.serving.vllm_server import VLLMServer
from vlmopt.testing.bench_vlm import build_bench_idefics3

SERVED_NAME = "bench-idefics3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local checkpoint directory (default: build the bench Idefics3)")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--image-side", type=int, default=256, help="side of the synthetic images")
    parser.add_argument("--dtype", default="auto", help="in-process dtype (auto: float32 on CPU)")
    parser.add_argument("--vllm-dtype", default="auto",
                        help="vLLM --dtype (auto: bfloat16, emulated on a CPU without AVX512-BF16/AMX: float32 there)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--demos", type=int, default=4, help="the few-shot program's image demos (0 always runs)")
    args = parser.parse_args()

    model = args.model or str(build_bench_idefics3(Path(tempfile.mkdtemp(prefix="p7-model-"))))
    examples = bench_images(args.images, args.image_side)
    warm = bench_images(args.threads, args.image_side, seed="warm")
    report: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg(), "torch_threads": torch.get_num_threads()},
        "settings": {"model": model, "images": args.images,
                     "demos": args.demos, "threads": args.threads, "image_side": args.image_side,
                     "max_new_tokens": args.max_new_tokens, "in_process_dtype": args.dtype,
                     "vllm_dtype": args.vllm_dtype},
    }

    demo_counts = sorted({0, args.demos})
    programs = {demos: program_with_demos(demos, args.image_side) for demos in demo_counts}
    rates = {}
    in_process = create_lm(model, dtype=args.dtype, max_new_tokens=args.max_new_tokens,
                           max_batch_size=args.threads, cache=False)
    report["settings"]["parameters_M"] = round(sum(p.numel() for p in in_process.engine.model.parameters()) / 1e6, 1)
    for demos, program in programs.items():
        images_per_s(in_process, program, warm, args.threads)  # warm-up: kernels, and this program's prefix
        rates[f"in_process_{demos}_demos"] = images_per_s(in_process, program, examples, args.threads)
    in_process.engine.close()

    images = {"image": max(demo_counts) + 1}
    with VLLMServer(model, served_model_name=SERVED_NAME, limit_mm_per_prompt=images,
                    extra_args=["--dtype", args.vllm_dtype]) as server:
        plain = create_openai_lm(server.base_url, SERVED_NAME, max_tokens=args.max_new_tokens, cache=False)
        scored = create_vllm_lm(server.base_url, SERVED_NAME, max_tokens=args.max_new_tokens, cache=False)
        for demos, program in programs.items():
            images_per_s(scored, program, warm, args.threads)
            rates[f"vllm_{demos}_demos"] = images_per_s(plain, program, examples, args.threads)
            rates[f"vllm_with_probabilities_{demos}_demos"] = images_per_s(scored, program, examples, args.threads)

    report["images_per_s"] = {name: round(rate, 2) for name, rate in rates.items()}
    report["ratios"] = {f"in_process / vllm_with_probabilities, {demos} demos (same output)":
                        round(rates[f"in_process_{demos}_demos"] / rates[f"vllm_with_probabilities_{demos}_demos"], 2)
                        for demos in demo_counts}
    report["ratios"] |= {f"in_process / vllm, {demos} demos": round(rates[f"in_process_{demos}_demos"]
                                                                    / rates[f"vllm_{demos}_demos"], 2)
                         for demos in demo_counts}
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
