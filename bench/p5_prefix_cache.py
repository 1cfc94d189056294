"""P5: vLLM prefix-cache hit rate for a few-shot prompt (4 demo images) over 50 query images.

The compact adapter puts the instruction and the demos (with their images) before the query image,
so every request of a run shares that prefix and vLLM can reuse its KV cache. vLLM caches whole
blocks only (CPU default: 128 tokens; GPU: 16), so what a request can reuse is the shared prefix
rounded *down* to a block, and the query's own tokens (its image) are always computed. The bench
reports, per block size and instruction length:

* ``hit_rate`` — ``vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total`` (tokens) over
  the 50 queries, read from ``/metrics`` before and after (one warm-up request, not counted, fills
  the cache first; ``hit_rate_with_warmup`` counts it);
* ``ceiling`` — the best any block cache could do on this layout: full shared blocks / prompt
  tokens, from the server's own tokenization (``/tokenize``) of a request;
* the token counts behind them: shared prefix, prompt, block.

The prompt is the real thing: a ``Classify`` program with 4 demos rendered by the compact adapter
and sent by DSPy (``create_openai_lm``), ``threads`` requests in flight. The model is P7's bench
Idefics3 (64 image tokens per image, as SmolVLM at 512 px) unless ``--model`` is given.

    python bench/p5_prefix_cache.py                         # block 128 (CPU default) and 32
    python bench/p5_prefix_cache.py --block-sizes 16 --instruction-words 40 400
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import tempfile
import urllib.request
from pathlib import Path

import dspy
import httpx
from p7_backends import LABELS, SERVED_NAME, TASK, bench_images  # bench/ is on sys.path
from rich.console import Console

from vlmopt.artifacts import render_prompt
from vlmopt.evaluate import evaluate_program
from vlmopt.export import fill_image
from vlmopt.programs import create_program
from vlmopt.serving.openai_lm import create_openai_lm
from vlmopt.serving.vllm_server import VLLMServer
from vlmopt.testing.bench_vlm import build_bench_idefics3

INSTRUCTION = ("Look at the single shape drawn on the light background and name it. A circle is round with no "
               "corners. A square has four equal sides and four right angles. A triangle has three sides and "
               "three corners. Ignore the colour, the size and the position of the shape. ")


def instruction(words: int) -> str:
    """An instruction of about ``words`` words (the base text repeated): the length of the shared prefix."""
    base = INSTRUCTION.split()
    return " ".join(base[i % len(base)] for i in range(words))


def cache_counters(root_url: str) -> tuple[float, float]:
    """(hits, queries) in tokens, summed over the server's engines."""
    with urllib.request.urlopen(f"{root_url}/metrics", timeout=10) as response:
        text = response.read().decode()

    def total(name: str) -> float:
        return sum(float(v) for v in re.findall(rf"^vllm:{name}_total\{{[^}}]*\}} (\S+)$", text, re.M))

    return total("prefix_cache_hits"), total("prefix_cache_queries")


def prompt_tokens(root_url: str, messages: list[dict]) -> list[int]:
    body = {"model": SERVED_NAME, "messages": messages, "add_generation_prompt": True}
    return httpx.post(f"{root_url}/tokenize", json=body, timeout=60).json()["tokens"]


def layout(root_url: str, program, query: dspy.Example) -> tuple[int, int]:
    """(shared prefix tokens, prompt tokens) of this program's requests, as the server tokenizes them.

    Image placeholders are the same token ids for every image (vLLM tells images apart by content
    hash), so the shared prefix ends where the query image starts: the first token where the
    request differs from the same request without the query image.
    """
    template = {"messages": render_prompt(program, structured=True)["messages"]}
    messages = fill_image(template, query.image.url)["messages"]
    *earlier, last = messages
    text_only = [*earlier, {**last, "content": [p for p in last["content"] if p["type"] != "image_url"]}]
    full, cut = prompt_tokens(root_url, messages), prompt_tokens(root_url, text_only)
    shared = next((i for i, (x, y) in enumerate(zip(full, cut, strict=False)) if x != y), min(len(full), len(cut)))
    return shared, len(full)


def measure(server: VLLMServer, block: int, words: int, demos: list[dspy.Example], queries: list[dspy.Example],
            warmup: dspy.Example, threads: int) -> dict:
    program = create_program(TASK.model_copy(update={"system_prompt": instruction(words)}), LABELS)
    program.predict.demos = demos
    lm = create_openai_lm(server.base_url, SERVED_NAME, max_tokens=16, cache=False)
    quiet = Console(file=io.StringIO())
    run = dict(lm=lm, task=TASK, labels=LABELS, num_threads=threads, console=quiet)
    before = cache_counters(server.root_url)
    evaluate_program(program, [warmup], **run)
    warm = cache_counters(server.root_url)
    outcome = evaluate_program(program, queries, **run)
    after = cache_counters(server.root_url)
    if outcome.failed_ids:
        raise RuntimeError(f"{len(outcome.failed_ids)} requests failed: {next(iter(outcome.errors.values()))}")
    shared, prompt = layout(server.root_url, program, queries[0])
    hits, asked = after[0] - warm[0], after[1] - warm[1]
    return {
        "block_size": block, "instruction_words": words, "queries": len(queries),
        "shared_prefix_tokens": shared, "prompt_tokens": prompt,
        "hit_rate": round(hits / asked, 4),
        "ceiling": round(shared // block * block / prompt, 4),
        "hit_rate_with_warmup": round((after[0] - before[0]) / (after[1] - before[1]), 4),
        "hits_tokens": int(hits), "queried_tokens": int(asked),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local checkpoint directory (default: build P7's bench Idefics3)")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--demos", type=int, default=4)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--instruction-words", type=int, nargs="+", default=[40, 1200])
    parser.add_argument("--image-side", type=int, default=256)
    args = parser.parse_args()

    model = args.model or str(build_bench_idefics3(Path(tempfile.mkdtemp(prefix="p5-model-"))))
    images = bench_images(args.demos + args.queries + 1, args.image_side)
    demos, warmup, queries = images[: args.demos], images[args.demos], images[args.demos + 1:]
    rows = []
    for block in args.block_sizes:
        # --enforce-eager: the hit rate does not depend on torch.compile, the start time does.
        with VLLMServer(model, served_model_name=SERVED_NAME, limit_mm_per_prompt={"image": args.demos + 1},
                        extra_args=["--block-size", str(block), "--enforce-eager"]) as server:
            rows += [measure(server, block, words, demos, queries, warmup, args.threads)
                     for words in args.instruction_words]
    print(json.dumps({
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "settings": {"model": model, "demos": args.demos, "queries": args.queries, "threads": args.threads,
                     "image_side": args.image_side, "target_hit_rate": 0.95},
        "results": rows,
    }, indent=2))


if __name__ == "__main__":
    main()
