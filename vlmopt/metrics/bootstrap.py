"""Seeded percentile-bootstrap interval for a mean of per-example scores.

Test sets in this project are small (100-1000 images), so an accuracy of 0.97 means little
without its spread; two prompts whose intervals overlap are not shown to differ. The interval is
seeded so that a rerun of the same predictions writes the same metrics.json.

Example::

    correct = [1, 1, 0, 1, 1]                 # 1 = right, 0 = wrong (invalid counts as 0)
    low, high = bootstrap_mean_ci(correct, n_boot=1000, seed=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Resample in blocks so that n_boot x n indices never exceed this many at once (memory bound).
_BLOCK_ELEMENTS = 2_000_000


def bootstrap_mean_ci(
    scores: Sequence[float] | np.ndarray,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap ``(low, high)`` for the mean of ``scores``.

    Each of ``n_boot`` resamples draws ``len(scores)`` examples with replacement using
    ``numpy.random.default_rng(seed)``; the interval is the ``(1-confidence)/2`` and
    ``(1+confidence)/2`` quantiles of the resampled means. Same scores + same seed -> same
    interval. Scores are per-example values such as 1/0 correctness or a Hamming score.
    """
    values = np.asarray(scores, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("bootstrap needs a non-empty 1-D sequence of scores")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    rng = np.random.default_rng(seed)
    n = values.size
    block = max(1, _BLOCK_ELEMENTS // n)
    means = np.empty(n_boot)
    for start in range(0, n_boot, block):
        rows = min(block, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        means[start : start + rows] = values[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    scores: Sequence[float] | np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """The interval as ``metrics.json`` writes it: ``{"low", "high", "level", "n_boot", "seed"}``."""
    low, high = bootstrap_mean_ci(scores, n_boot=n_boot, seed=seed, confidence=level)
    return {"low": low, "high": high, "level": level, "n_boot": n_boot, "seed": seed}
