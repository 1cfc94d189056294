"""Image embeddings of a split, computed once and kept, so a killed baseline run resumes where it was.

Embedding is the baselines' one long step (thousands of images through a ViT on a CPU). Each
split's embeddings are written, as soon as they are complete, to ``<run.cache_dir>/embeddings/``
as a ``.safetensors`` file (tensors only: no code can come back with them), keyed by the model's
fingerprint and the split's ordered ids. A rerun of the same command finds them and skips
the work; the per-image seconds measured when they were computed come back with them, so the
latency a report shows is the model's, never a cache read's.

Example::

    features, seconds = embed_split(encoder, "test", splits.test, cache_dir=".vlmopt_cache")
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import dspy
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.numpy import load_file, save_file

from vlmopt.datasets.images import dspy_image_to_pil


def cache_path(cache_dir: str | Path, encoder, split: str, ids: Sequence[str], max_side: int) -> Path:
    """Where a split's embeddings live: the key covers the weights, the image size and every id in order."""
    key = json.dumps([encoder.source.name, encoder.source.fingerprint, str(encoder.model.dtype), max_side, list(ids)])
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
    return Path(cache_dir) / "embeddings" / f"{split}-{digest}.safetensors"


def embed_split(
    encoder,
    split: str,
    examples: Sequence[dspy.Example],
    *,
    cache_dir: str | Path,
    max_side: int,
    batch_size: int = 32,
    console: Console | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(features (n, d), seconds per image (n,))`` for a split, from the cache when it holds them."""
    ids = [str(example.id) for example in examples]
    path = cache_path(cache_dir, encoder, split, ids, max_side)
    if path.is_file():
        stored = load_file(path)
        return stored["features"], stored["seconds"]
    features, seconds = [], []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.1f} img/s"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task(f"embed {split}", total=len(examples), rate=0.0)
        for start in range(0, len(examples), batch_size):  # decoded a batch at a time: memory stays flat
            batch = [dspy_image_to_pil(example.image) for example in examples[start : start + batch_size]]
            batch_features, batch_seconds = encoder.encode_images(batch, batch_size=batch_size)
            features.append(batch_features)
            seconds.append(batch_seconds)
            progress.update(bar, advance=len(batch), rate=len(batch) / max(batch_seconds.sum(), 1e-9))
    features, seconds = np.concatenate(features), np.concatenate(seconds)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    save_file({"features": np.ascontiguousarray(features), "seconds": np.ascontiguousarray(seconds)}, partial)
    partial.replace(path)  # whole or absent: a kill mid-write leaves no half file under the real name
    return features, seconds
