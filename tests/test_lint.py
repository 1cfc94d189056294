"""The code passes the project's lint (``[tool.ruff]`` in pyproject.toml): unused names, import
order, bugbear's likely bugs and 120-column lines are caught here, so CI enforces them."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "vlmopt", "tests", "bench"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
