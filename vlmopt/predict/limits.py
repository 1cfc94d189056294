"""``--max-failures``: how many failed images a predict run tolerates before it stops.

A dead server or a wrong model fails every image; grinding through a million of them helps no
one, so the run stops once *more* failures than allowed have happened, keeps every finished row,
and says why. The limit is a count (``10``), or a fraction of the images this run has to predict
(``0.05`` or ``5%``; rounded down). The default mirrors ``evaluate``'s: a tenth, at least 5.

Example::

    FailureLimit.parse("5%").allowed(2000)   # 100: the 101st failure stops the run
    FailureLimit.parse("0").allowed(2000)    # 0: the first failure stops it
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlmopt.errors import VlmoptError


class FailureLimitError(VlmoptError, ValueError):
    """A ``--max-failures`` value that is neither a count nor a fraction."""


@dataclass(frozen=True)
class FailureLimit:
    """``count`` failures, or ``fraction`` of the images to predict; neither: the default (10%, at least 5)."""

    count: int | None = None
    fraction: float | None = None

    @classmethod
    def parse(cls, text: str | None) -> FailureLimit:
        """``"10"`` -> a count; ``"0.05"`` or ``"5%"`` -> a fraction; None -> the default."""
        if text is None:
            return cls()
        value = text.strip()
        try:
            if value.endswith("%"):
                fraction = float(value[:-1]) / 100
            elif value.isdigit():
                return cls(count=int(value))
            else:
                fraction = float(value)
        except ValueError:
            fraction = math.nan
        if not 0 <= fraction <= 1:
            raise FailureLimitError(
                f"--max-failures {text!r}: give a count (10) or a fraction of the images (0.05 or 5%)"
            )
        return cls(fraction=fraction)

    def allowed(self, n_images: int) -> int:
        """Failures tolerated in a run over ``n_images`` images; one more stops it."""
        if self.count is not None:
            return self.count
        if self.fraction is not None:
            return math.floor(self.fraction * n_images)
        return max(5, n_images // 10)

    def describe(self) -> str:
        if self.count is not None:
            return str(self.count)
        if self.fraction is not None:
            return f"{self.fraction:.0%}" if self.fraction * 100 == round(self.fraction * 100) else str(self.fraction)
        return "the default, 10% (at least 5)"


class PredictStopped(VlmoptError, RuntimeError):
    """The run stopped after too many failures; the rows written are kept (the CLI prints ``stopped:``, exit 2)."""

    prefix = "stopped"
