"""Is ``model.id`` (or ``vlmopt serve MODEL``) a checkpoint that can be loaded? Checked before any load.

A name that looks like a path (``/``, ``.`` or ``~`` first, more than one ``/``, or something that
exists here) must be a model directory: otherwise it is refused at once, instead of being tried as a
hub id and reported as "hub unreachable" or by vLLM's traceback. A hub id (``org/name``) is left to
the loader, which knows whether the hub answers.
"""

from __future__ import annotations

from pathlib import Path

from vlmopt.errors import VlmoptError


class ModelSourceError(VlmoptError, ValueError):
    """``model.id`` / ``model.revision`` name no checkpoint that can be loaded here."""


def check_model_path(model: str) -> None:
    """A model given as a path must be a directory here; a hub id (``org/name``) passes."""
    path = Path(model).expanduser()
    looks_like_path = model.startswith((".", "/", "~")) or path.exists() or model.count("/") > 1
    if looks_like_path and not path.is_dir():
        problem = "is a file, not a model directory" if path.exists() else "does not exist"
        raise ModelSourceError(f"model directory {model!r} {problem}; give a local model directory or a hub id")
