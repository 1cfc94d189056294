"""Cost per image: latency percentiles and mean prompt / completion tokens.

A prompt with eight demo images may win 2 points of accuracy and cost 8x the prompt tokens;
the report shows both so the trade is visible. Latency counts every call, invalid outputs
included (they cost the same). Percentiles use numpy's default linear interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def latency_summary(latencies_s: Sequence[float]) -> dict[str, float | int | None]:
    """``{"n", "p50_s", "p95_s", "mean_s", "max_s"}`` over per-image latencies in seconds."""
    values = np.asarray(latencies_s, dtype=float)
    if values.size == 0:
        return {"n": 0, "p50_s": None, "p95_s": None, "mean_s": None, "max_s": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {
        "n": int(values.size),
        "p50_s": float(p50),
        "p95_s": float(p95),
        "mean_s": float(values.mean()),
        "max_s": float(values.max()),
    }


def token_summary(
    prompt_tokens: Sequence[int | None], completion_tokens: Sequence[int | None]
) -> dict[str, float | int | None]:
    """Mean prompt and completion tokens per image over the images whose usage is known.

    ``n_prompt`` / ``n_completion`` say how many images reported usage (some backends or cached
    calls report none); a mean is None when no image did.
    """
    def mean_known(values: Sequence[int | None]) -> tuple[float | None, int]:
        known = [v for v in values if v is not None]
        return (float(np.mean(known)) if known else None), len(known)

    prompt_mean, n_prompt = mean_known(prompt_tokens)
    completion_mean, n_completion = mean_known(completion_tokens)
    return {
        "prompt_mean": prompt_mean,
        "completion_mean": completion_mean,
        "n_prompt": n_prompt,
        "n_completion": n_completion,
    }
