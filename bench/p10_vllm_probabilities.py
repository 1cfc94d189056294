"""P10: what label probabilities cost on a vLLM (CPU) server, with 0 and 4 image demos.

One server (P7's bench Idefics3), one ``Classify`` program (3 labels), ``evaluate_program`` over
``images`` query images with ``threads`` in flight (every run its own images, drawn alike: a run
on images another run sent would find them in the prefix cache), three ways side by side:

* **plain** — ``create_openai_lm``: the json_schema answer only;
* **trie** — ``create_vllm_lm``: the same answer plus label probabilities, one
  ``logprob_token_ids`` request per node of the label token trie (reads the prefix cache);
* **prompt_logprobs** — ``create_vllm_lm(scoring="prompt_logprobs")``: the earlier method, one
  ``prompt_logprobs`` request per label, which vLLM serves without a prefix-cache lookup.

Goal (issue 14): img/s(plain) / img/s(trie) <= 1.5 with 4 demos. Per run, from the server's
``/metrics`` before and after (one warm-up run per program and path first, on other images):

* ``requests_per_image``, ``prompt_tokens_per_image`` (every request's prompt) and
  ``computed_tokens_per_image`` (of those, not served from the prefix cache);
* ``hit_rate`` — prefix-cache hits / queries (P5's figure: only requests that look the cache up
  count as queries, so prompt_logprobs requests vanish from it); ``cached_share`` — cached /
  all prompt tokens, which counts them;
* ``mm_cache_hit_rate`` — the server's multimodal processor cache (each request re-sends its images);
* ``prefill_s_per_request`` / ``queue_s_per_request`` — the server's mean per-request prefill and
  queue time.

Not a test: figures depend on the machine and on what else runs on it (the load average is printed).

    python bench/p10_vllm_probabilities.py                 # builds the bench model in a temp dir
    python bench/p10_vllm_probabilities.py --repeats 3     # medians of 3 rounds
    python bench/p10_vllm_probabilities.py --vllm-dtype float32 --eager   # a CPU without AVX512-BF16
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import dspy
from p7_backends import SERVED_NAME  # bench/ is on sys.path
from rich.console import Console
from shapes_bench import LABELS, TASK, bench_images

from vlmopt.evaluate import evaluate_program
from vlmopt.programs import create_program
from vlmopt.serving.openai_lm import create_openai_lm
from vlmopt.serving.vllm_probabilities import create_vllm_lm
from vlmopt.serving.vllm_server import VLLMServer
from vlmopt.testing.bench_vlm import build_bench_idefics3

PATHS = ("plain", "trie", "prompt_logprobs")
COUNTERS = ("request_success_total", "prompt_tokens_total", "prompt_tokens_cached_total", "prefix_cache_hits_total",
            "prefix_cache_queries_total", "mm_cache_hits_total", "mm_cache_queries_total",
            "request_prefill_time_seconds_sum", "request_queue_time_seconds_sum")


def create(path: str, base_url: str, max_tokens: int) -> dspy.LM:
    if path == "plain":
        return create_openai_lm(base_url, SERVED_NAME, max_tokens=max_tokens, cache=False)
    return create_vllm_lm(base_url, SERVED_NAME, max_tokens=max_tokens, cache=False, scoring=path)


def counters(root_url: str) -> dict[str, float]:
    """The server's counters in ``COUNTERS``, each summed over its label sets."""
    with urllib.request.urlopen(f"{root_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {name: sum(float(v) for v in re.findall(rf"^vllm:{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))
            for name in COUNTERS}


def measure(server: VLLMServer, lm: dspy.LM, program, examples: list[dspy.Example], threads: int) -> dict:
    quiet = Console(file=io.StringIO())
    before = counters(server.root_url)
    start = time.perf_counter()
    outcome = evaluate_program(program, examples, lm=lm, task=TASK, labels=LABELS, num_threads=threads, console=quiet)
    elapsed = time.perf_counter() - start
    if outcome.failed_ids:
        raise RuntimeError(f"{len(outcome.failed_ids)} items failed: {next(iter(outcome.errors.values()))}")
    d = {name: value - before[name] for name, value in counters(server.root_url).items()}
    n, requests = len(examples), d["request_success_total"]
    return {
        "images_per_s": n / elapsed,
        "requests_per_image": requests / n,
        "prompt_tokens_per_image": d["prompt_tokens_total"] / n,
        "computed_tokens_per_image": (d["prompt_tokens_total"] - d["prompt_tokens_cached_total"]) / n,
        "hit_rate": d["prefix_cache_hits_total"] / max(d["prefix_cache_queries_total"], 1),
        "cached_share": d["prompt_tokens_cached_total"] / max(d["prompt_tokens_total"], 1),
        "mm_cache_hit_rate": d["mm_cache_hits_total"] / max(d["mm_cache_queries_total"], 1),
        "prefill_s_per_request": d["request_prefill_time_seconds_sum"] / requests,
        "queue_s_per_request": d["request_queue_time_seconds_sum"] / requests,
    }


def median_rows(rounds: list[dict]) -> dict:
    return {key: round(statistics.median(r[key] for r in rounds), 4) for key in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local checkpoint directory (default: build P7's bench Idefics3)")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--demos", type=int, nargs="+", default=[0, 4])
    parser.add_argument("--image-side", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every run; medians are printed")
    parser.add_argument("--eager", action="store_true", help="start vLLM with --enforce-eager (faster start)")
    parser.add_argument("--block-size", type=int, help="vLLM --block-size (default: the server's, 128 on CPU)")
    parser.add_argument("--vllm-dtype", default="auto",
                        help="vLLM --dtype: auto serves bfloat16 on CPU, emulated (tens of times slower) on a CPU "
                             "without AVX512-BF16/AMX; float32 there")
    args = parser.parse_args()

    model = args.model or str(build_bench_idefics3(Path(tempfile.mkdtemp(prefix="p10-model-"))))
    most = max(args.demos)
    runs = [(repeat, count, path) for repeat in range(args.repeats) for count in args.demos for path in PATHS]
    images = bench_images(most + args.threads + args.images * len(runs), args.image_side)
    demos, warm, rest = images[:most], images[most:most + args.threads], images[most + args.threads:]
    # Each run its own query images: a path run after another on the same images would find their
    # generation prompts in the prefix cache.
    queries = {run: rest[i * args.images:(i + 1) * args.images] for i, run in enumerate(runs)}
    report: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "load_avg_at_start": os.getloadavg()},
        "settings": {"model": model, "images": args.images, "threads": args.threads, "image_side": args.image_side,
                     "labels": len(LABELS), "repeats": args.repeats, "eager": args.eager,
                     "vllm_dtype": args.vllm_dtype, "block_size": args.block_size or "server default",
                     "goal": "plain/trie <= 1.5"},
    }
    rounds: dict[tuple[int, str], list[dict]] = {}
    extra = ["--dtype", args.vllm_dtype, *(["--enforce-eager"] if args.eager else []),
             *(["--block-size", str(args.block_size)] if args.block_size else [])]
    with VLLMServer(model, served_model_name=SERVED_NAME, limit_mm_per_prompt={"image": most + 1},
                    extra_args=extra) as server:
        lms = {path: create(path, server.base_url, args.max_new_tokens) for path in PATHS}
        programs = {}
        for count in args.demos:
            programs[count] = create_program(TASK, LABELS)
            programs[count].predict.demos = demos[:count]
            for path in PATHS:
                measure(server, lms[path], programs[count], warm, args.threads)
        for repeat, count, path in runs:
            rounds.setdefault((count, path), []).append(
                measure(server, lms[path], programs[count], queries[repeat, count, path], args.threads))
        lms["plain"].close()
        for path in PATHS[1:]:
            lms[path].engine.close()  # a custom engine is the caller's to close, not the LM's

    results = {f"{count}_demos": {path: median_rows(rounds[count, path]) for path in PATHS} for count in args.demos}
    report["results"] = results
    report["ratios"] = {
        f"{count}_demos": {f"plain / {path}": round(results[f"{count}_demos"]["plain"]["images_per_s"]
                                                    / results[f"{count}_demos"][path]["images_per_s"], 2)
                           for path in PATHS[1:]}
        for count in args.demos}
    report["machine"]["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
