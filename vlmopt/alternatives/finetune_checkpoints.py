"""Where a fine-tuning run keeps its checkpoints, and which one a rerun resumes from.

The checkpoint folder is named by what determines the training (base weights, rendered prompt,
split, settings, seed), under the project's cache directory: rerunning the same command after a
kill finds it and continues from its last complete checkpoint; changing anything starts afresh.
The trainer writes a checkpoint's ``trainer_state.json`` last, so a checkpoint without one was cut
off mid-write: it is removed, and the one before it is used.

Example::

    root = checkpoint_root(cfg.run.cache_dir, key)
    resume = last_complete_checkpoint(root)     # Path(".../checkpoint-12") or None
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

TRAINER_STATE = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def training_key(facts: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of what determines the training."""
    text = json.dumps(facts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_root(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).resolve() / "finetune" / key


def _step(path: Path) -> int:
    return int(_CHECKPOINT.match(path.name).group(1))


def last_complete_checkpoint(root: Path) -> Path | None:
    """The highest-step checkpoint with its trainer state; cut-off ones are deleted first."""
    if not root.is_dir():
        return None
    checkpoints = sorted((p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)), key=_step)
    complete = []
    for path in checkpoints:
        if (path / TRAINER_STATE).is_file():
            complete.append(path)
        else:
            shutil.rmtree(path)
    return complete[-1] if complete else None
