"""Errors of the dataset loader: each message names the source, the column or the item to fix."""

from vlmopt.errors import OFFLINE_HINT, VlmoptError


class DatasetError(VlmoptError, ValueError):
    """The dataset cannot be used as configured (missing column, too few items, bad source)."""


class HubUnreachable(DatasetError, ConnectionError):
    """A hub id was asked for but the Hugging Face Hub cannot be reached (offline or no network)."""

    hint = OFFLINE_HINT


class TooFewClasses(DatasetError):
    """A single-label classifier needs two or more classes to choose between."""

    def __init__(self, classes: list[str], source: str) -> None:
        found = f"only {classes[0]!r}" if classes else "no class folders (the images are not in <class_name>/ folders)"
        super().__init__(
            f"a classifier needs two or more classes; found {found} in {source}: add images of each other class "
            "(an image folder holds one <class_name>/ subfolder per class)"
        )
