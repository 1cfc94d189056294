"""P14: ``predict --ray`` with N actors vs one process, on this machine: throughput and row-for-row agreement.

Both runs predict the same generated folder with the same artifact on the bench Idefics3
(``vlmopt.testing.bench_vlm``, ~65 M parameters, in-process): one process with ``--num-threads``
threads (the engine micro-batches them), then a local Ray (started here, loopback only) with
``--actors`` actors of one CPU each, ``--threads-per-actor`` calls in flight in each. Model
loading is left out of both figures (``summary.wall_s`` covers the streaming part only); Ray's
start-up and the actors' model loads are printed apart, and the Ray rate is also given after
the first block came back (the pool's start-up, ``summary.first_s``, taken out). The rows are compared id by id: same
label, same raw text, confidences within 1e-6.

On a machine of C cores, N actors of one core each split the cores instead of sharing one
process's threads, so the ratio says what the Ray layer costs or gains on one host; across hosts
each actor brings its own cores (or GPU: ``actor_gpus=1``), which is where Ray pays.

    python bench/p14_ray_predict.py                         # 96 images, 2 actors
    python bench/p14_ray_predict.py --images 192 --actors 2 --threads-per-actor 4
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from vlmopt.artifacts import load_artifact, save_artifact
from vlmopt.config import TaskConfig
from vlmopt.predict import predict_to_file
from vlmopt.predict.ray_runner import predict_on_ray
from vlmopt.predict.sinks import read_jsonl
from vlmopt.programs import create_program
from vlmopt.serving.factory import close_lm, create_lm
from vlmopt.testing.bench_vlm import build_bench_idefics3
from vlmopt.testing.images import make_image_dataset

CLASSES = ["circle", "square", "triangle"]
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local checkpoint directory (default: build the bench Idefics3)")
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--threads", type=int, default=4, help="one process: calls in flight")
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--threads-per-actor", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="Ray: images per block")
    args = parser.parse_args()

    import ray

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        model = args.model or str(build_bench_idefics3(work / "model"))
        cfg = TaskConfig(model={"id": model, "max_new_tokens": 16}, dataset={"source": "-", "max_image_side": 256},
                         task={"labels": CLASSES})
        artifact = save_artifact(create_program(cfg.task, CLASSES), cfg, CLASSES, work / "artifact.json",
                                 metrics={}, provenance={})
        data = make_image_dataset(work / "data", classes=tuple(CLASSES), n_per_class=args.images // 3, size=256)
        print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
              f"{args.images} images, bench Idefics3")

        lm = create_lm(cfg)
        try:
            local = predict_to_file(load_artifact(artifact), [data.folder], work / "local.jsonl", lm=lm,
                                    num_threads=args.threads)
        finally:
            close_lm(lm)
        print(f"one process, {args.threads} threads: {local.predicted / local.wall_s:.2f} img/s "
              f"({local.predicted} rows, {local.wall_s:.1f} s)")

        started = time.perf_counter()
        ray.init(num_cpus=args.actors, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}})
        print(f"ray.init: {time.perf_counter() - started:.1f} s")
        try:
            started = time.perf_counter()
            on_ray = predict_on_ray(artifact, [data.folder], work / "ray.jsonl", cfg=cfg, actors=args.actors,
                                    num_threads=args.threads_per_actor, batch_size=args.batch_size)
            total = time.perf_counter() - started
        finally:
            ray.shutdown()
        rate = on_ray.predicted / on_ray.wall_s
        steady = (on_ray.predicted - args.batch_size) / (on_ray.wall_s - on_ray.first_s)
        print(f"ray, {args.actors} actors x {args.threads_per_actor} threads: {rate:.2f} img/s with the pool's "
              f"start-up ({on_ray.first_s:.1f} s to the first block), {steady:.2f} img/s after it "
              f"({on_ray.predicted} rows, {on_ray.wall_s:.1f} s, {total:.1f} s in all)")
        local_rate = local.predicted / local.wall_s
        print(f"ratio ray / one process: {rate / local_rate:.2f} (after start-up {steady / local_rate:.2f}); "
              f"load now {os.getloadavg()[0]:.1f}")

        want = {row["id"]: row for row in read_jsonl(work / "local.jsonl")}
        got = list(read_jsonl(work / "ray.jsonl"))
        same = sum(1 for row in got if agrees(row, want[row["id"]]))
        ids = "equal" if {row["id"] for row in got} == set(want) else "DIFFER"
        print(f"rows: one process {len(want)}, ray {len(got)} (ids {ids}); {same}/{len(got)} rows agree")


def agrees(row: dict, want: dict) -> bool:
    same_answer = (row["label"], row["raw"]) == (want["label"], want["raw"])
    return same_answer and abs(row["confidence"] - want["confidence"]) <= 1e-6


if __name__ == "__main__":
    main()
