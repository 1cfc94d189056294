"""Rows a review step left out, by reason, each named: counted in the summary line, never a crash.

Example::

    skips = Skips()
    skips.add("cancelled", "img_3")
    skips.describe()        # "1 cancelled (img_3)"
"""

from __future__ import annotations

from dataclasses import dataclass, field

SHOWN = 5
"""How many ids a summary names per reason before "and N more"."""


@dataclass
class Skips:
    """Reason -> the ids (or ``id: detail``) left out for it, in the order met."""

    by_reason: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, item: str) -> None:
        self.by_reason.setdefault(reason, []).append(item)

    def count(self, reason: str | None = None) -> int:
        if reason is not None:
            return len(self.by_reason.get(reason, []))
        return sum(len(items) for items in self.by_reason.values())

    def describe(self) -> str:
        """``"2 cancelled (a, b), 1 unknown label (c: 'hamster')"``; empty when nothing was left out."""
        parts = []
        for reason, items in self.by_reason.items():
            shown = ", ".join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")
            parts.append(f"{len(items)} {reason.replace('_', ' ')} ({shown})")
        return ", ".join(parts)
