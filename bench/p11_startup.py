"""P11: CLI start-up — wall time and peak memory of the commands a user runs first.

``vlmopt --help``, a command's ``--help`` and ``config validate`` should answer in well under a
second: they load no model stack (torch, dspy, transformers, datasets), which
``tests/test_import_layers.py`` checks. Each command runs as a fresh process, ``--repeat`` times;
the median wall time and the median peak RSS (``getrusage`` of the child) are printed.

    python bench/p11_startup.py               # median of 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["--help"], ["optimize", "--help"], ["predict", "--help"],
            ["config", "validate", "configs/cats_vs_dogs.yaml"])


def run_once(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one ``vlmopt`` process."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "vlmopt.cli", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"vlmopt {' '.join(args)} failed")
    return wall, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    print(f"P11 CLI start-up, median of {repeat}; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for args in COMMANDS:
        runs = [run_once(args) for _ in range(repeat)]
        wall = statistics.median(r[0] for r in runs)
        rss = statistics.median(r[1] for r in runs)
        print(f"  vlmopt {' '.join(args):<45} {wall:5.2f} s  {rss:6.1f} MiB")


if __name__ == "__main__":
    main()
