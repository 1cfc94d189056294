"""Errors of the review round trip: each message names the file, the task or the row to fix."""

from vlmopt.errors import VlmoptError


class ReviewError(VlmoptError, ValueError):
    """A review input cannot be used: not a run or predict output, a bad Label Studio export, a bad manifest."""


class SdkMissing(ReviewError, ImportError):
    """``label-studio-sdk`` (the ``review`` extra) is not installed."""

    def __init__(self) -> None:
        super().__init__("vlmopt review needs label-studio-sdk: pip install 'vlmopt[review]'")
