"""Seeded, label-stratified sampling and train/val/test splitting, and the split fingerprint.

Both work per stratum (class) and round each class's share down or up, so every class's count
in the sample and in each split is within one item of its exact share; the rounding is balanced
across classes so that no split collects every class's extra item. Randomness comes from
``random.Random`` seeded with a string of the seed and the class, so the result depends only on
the config's seed and the data, never on hash randomisation, and adding a class does not
reshuffle the others.

Example::

    parts = stratified_split(["cat", "dog", "cat", ...], {"train": 0.2, "val": 0.4, "test": 0.4}, seed=0)
    parts["val"]       # positions into the input list
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Iterable, Mapping, Sequence

from vlmopt.datasets.errors import DatasetError


class SplitError(DatasetError):
    """A class has too few items to appear in every split."""


def allocate(total: int, fractions: Sequence[float], behind: Sequence[float] | None = None) -> list[int]:
    """Split ``total`` into integer shares of ``fractions``, each the floor or ceiling of its exact share.

    The units left after flooring go to shares with a remainder: first to those still at zero
    (so a small class reaches every split when it can), then to those furthest ``behind`` their
    running target (so rounding does not pile up in one split across classes), then largest
    remainder, then first.
    """
    exact = [total * f / sum(fractions) for f in fractions]
    counts = [math.floor(x) for x in exact]
    lag = behind or [0.0] * len(exact)
    order = sorted(
        range(len(exact)),
        key=lambda i: (exact[i] - counts[i] <= 1e-9, counts[i] > 0, -lag[i], counts[i] - exact[i], i),
    )
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _groups(strata: Sequence[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for position, key in enumerate(strata):
        groups.setdefault(key, []).append(position)
    return dict(sorted(groups.items()))


def stratified_sample(strata: Sequence[str], n: int, seed: int) -> list[int]:
    """Positions of a seeded sample of ``n`` items keeping each stratum's share (all if n >= len)."""
    if n >= len(strata):
        return list(range(len(strata)))
    groups = _groups(strata)
    shares = allocate(n, [len(positions) for positions in groups.values()])
    chosen: list[int] = []
    for (key, positions), share in zip(groups.items(), shares, strict=True):
        chosen += random.Random(f"{seed}:sample:{key}").sample(positions, share)
    return sorted(chosen)


def stratified_split(
    strata: Sequence[str], fractions: Mapping[str, float], seed: int, *, required: Iterable[str] = ()
) -> dict[str, list[int]]:
    """Positions of each split; every stratum (and every ``required`` one) must reach each split.

    Raises ``SplitError`` naming the class, its count and what each split would get.
    """
    names = list(fractions)
    groups = _groups(strata)
    for key in required:
        groups.setdefault(key, [])
    parts: dict[str, list[int]] = {name: [] for name in names}
    seen = 0
    for key, positions in sorted(groups.items()):
        behind = [seen * fractions[name] - len(parts[name]) for name in names]
        counts = allocate(len(positions), list(fractions.values()), behind)
        seen += len(positions)
        if min(counts) == 0:
            shares = ", ".join(f"{name} {count}" for name, count in zip(names, counts, strict=True))
            wanted = ", ".join(f"{name}={fraction:g}" for name, fraction in fractions.items())
            raise SplitError(
                f"class {key!r} has {len(positions)} item(s): too few for splits {wanted} "
                f"(it would get {shares}; every class needs at least one item in each split). "
                "Add items, raise dataset.n_samples, change dataset.splits, or leave the class out."
            )
        shuffled = list(positions)
        random.Random(f"{seed}:split:{key}").shuffle(shuffled)
        start = 0
        for name, count in zip(names, counts, strict=True):
            parts[name] += shuffled[start : start + count]
            start += count
    for name in names:
        parts[name].sort()
        random.Random(f"{seed}:order:{name}").shuffle(parts[name])
    return parts


def fingerprint(ids_by_split: Mapping[str, Sequence[str]]) -> str:
    """sha256 over the ordered ids of each split: equal fingerprints mean the same held-out protocol."""
    payload = json.dumps({name: list(ids) for name, ids in ids_by_split.items()}, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
