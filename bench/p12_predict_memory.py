"""P12: peak RSS of ``vlmopt predict`` over 2,000 generated images vs 200 (target growth <= 200 MiB).

``predict`` streams: images are discovered lazily, at most ``--num-threads`` are decoded at a
time, each row is appended as it finishes (Parquet: a journal, then parts), and DSPy's response
cache and call history are off for the run. So the peak should not grow with the folder. Each
size runs ``vlmopt predict FOLDER --artifact A -o out`` in a fresh process on the tiny fixture
VLM (in-process), and its peak RSS is read from the kernel (``RUSAGE_CHILDREN``, per child).
The output is read back: rows = images, none twice.

    python bench/p12_predict_memory.py                      # 200 vs 2000 images of 256 px, Parquet out
    python bench/p12_predict_memory.py --small 100 --large 1000 --output-format jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from vlmopt.artifacts import save_artifact
from vlmopt.config import TaskConfig
from vlmopt.programs import create_program
from vlmopt.testing.images import make_image_dataset
from vlmopt.testing.tiny_vlm import build_tiny_vlm

CLASSES = ("circle", "square", "triangle")
REPO = Path(__file__).resolve().parents[1]


def shapes_artifact(path: Path, model_dir: Path) -> Path:
    cfg = TaskConfig(model={"id": str(model_dir), "max_new_tokens": 16},
                     dataset={"source": "-", "max_image_side": 64}, task={"labels": list(CLASSES)})
    return save_artifact(create_program(cfg.task, list(CLASSES)), cfg, list(CLASSES), path, metrics={}, provenance={})


def output_ids(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=["id"]).column("id").to_pylist()
    return [json.loads(line)["id"] for line in path.read_text().splitlines()]


def run_predict(workdir: Path, artifact: Path, n_images: int, size: int, suffix: str, threads: int) -> dict:
    """Peak RSS (MiB), wall seconds and the output's row counts of one ``vlmopt predict`` over ``n_images``."""
    data = make_image_dataset(workdir / f"data{n_images}", classes=CLASSES, n_per_class=n_images // 3, size=size)
    out = workdir / f"out{n_images}{suffix}"
    command = [sys.executable, "-m", "vlmopt.cli", "predict", str(data.folder), "--artifact", str(artifact),
               "-o", str(out), "--num-threads", str(threads)]
    pid = os.fork()
    if pid == 0:  # the child becomes the CLI, so RUSAGE of this child is the CLI's alone
        os.chdir(REPO)
        os.environ["PYTHONPATH"] = str(REPO)
        quiet = os.open(workdir / f"predict{n_images}.log", os.O_WRONLY | os.O_CREAT)
        os.dup2(quiet, 1)  # the CLI's progress and summary table, out of the bench's own output
        os.execv(sys.executable, command)
    started = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vlmopt predict failed for {n_images} images (exit {os.waitstatus_to_exitcode(status)})")
    ids = output_ids(out)
    return {"peak": usage.ru_maxrss / 1024, "wall": time.perf_counter() - started, "images": len(data.items),
            "rows": len(ids), "distinct": len(set(ids))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic source images (px)")
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--output-format", choices=("parquet", "jsonl"), default="parquet")
    args = parser.parse_args()
    suffix = f".{args.output_format}"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        artifact = shapes_artifact(work / "artifact.json", build_tiny_vlm("idefics3", work / "model"))
        small = run_predict(work, artifact, args.small, args.size, suffix, args.threads)
        large = run_predict(work, artifact, args.large, args.size, suffix, args.threads)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"settings: {args.size}px sources -> max_image_side 64, tiny Idefics3 in-process, {args.threads} threads, "
          f"{args.output_format} output")
    for run in (small, large):
        print(f"P12 peak RSS {run['images']:>5} images: {run['peak']:8.1f} MiB  ({run['wall']:.0f} s, "
              f"{run['images'] / run['wall']:.2f} img/s incl. start-up; "
              f"rows {run['rows']}, distinct {run['distinct']})")
    growth = large["peak"] - small["peak"]
    verdict = "meets" if growth <= 200 else "MISSES"
    print(f"P12 growth: {growth:.1f} MiB for {large['images'] - small['images']} more images "
          f"({verdict} the <= 200 MiB target); ratio {large['peak'] / small['peak']:.2f}x")
    lost = sum(run["images"] - run["distinct"] for run in (small, large))
    twice = sum(run["rows"] - run["distinct"] for run in (small, large))
    print(f"P12 rows: {lost} images without a row, {twice} rows written twice")


if __name__ == "__main__":
    main()
