"""P6: peak RSS of ``vlmopt evaluate`` over 2,000 synthetic images vs 200 (target growth <= 200 MiB).

Images are decoded one at a time, downscaled and kept only as compact JPEG data URIs; decoded
pixels never pile up. Each size runs ``vlmopt evaluate --split all`` in a fresh process on the
tiny fixture VLM, and its peak RSS is read from the kernel (``RUSAGE_CHILDREN``, per child).

    python bench/p6_memory.py                 # 200 vs 2000 images of 256 px
    python bench/p6_memory.py --small 100 --large 1000 --size 512
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

from vlmopt.testing.images import make_image_dataset
from vlmopt.testing.tiny_vlm import build_tiny_vlm

CLASSES = ("circle", "square", "triangle")


def peak_rss_mib(workdir: Path, model_dir: Path, n_images: int, size: int) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one ``vlmopt evaluate`` over ``n_images`` images."""
    data = make_image_dataset(workdir / f"data{n_images}", classes=CLASSES, n_per_class=n_images // 3, size=size)
    cfg = {
        "name": f"p6-{n_images}",
        "model": {"id": str(model_dir), "max_new_tokens": 16},
        "dataset": {"source": str(data.folder), "kind": "imagefolder", "max_image_side": 64},
        "task": {"labels": list(CLASSES)},
        "run": {"output_dir": str(workdir / "runs"), "cache_dir": str(workdir / f"cache{n_images}"), "num_threads": 4},
    }
    path = workdir / f"p6-{n_images}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    pid = os.fork()
    if pid == 0:  # the child becomes the CLI, so RUSAGE of this child is the CLI's alone
        os.execv(sys.executable, [sys.executable, "-m", "vlmopt.cli", "evaluate", str(path), "--split", "all"])
    started = time.perf_counter()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vlmopt evaluate failed for {n_images} images")
    return usage.ru_maxrss / 1024, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--size", type=int, default=256, help="side of the synthetic source images (px)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_vlm("idefics3", work / "model")
        small, t_small = peak_rss_mib(work, model_dir, args.small, args.size)
        large, t_large = peak_rss_mib(work, model_dir, args.large, args.size)
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"settings: {args.size}px sources -> max_image_side 64, tiny Idefics3, 4 threads, split all")
    print(f"P6 peak RSS  {args.small:>5} images: {small:8.1f} MiB  ({t_small:.0f} s)")
    print(f"P6 peak RSS  {args.large:>5} images: {large:8.1f} MiB  ({t_large:.0f} s)")
    growth = large - small
    print(f"P6 growth: {growth:.1f} MiB for {args.large - args.small} more images "
          f"({'meets' if growth <= 200 else 'MISSES'} the <= 200 MiB target); ratio {large / small:.2f}x")


if __name__ == "__main__":
    main()
