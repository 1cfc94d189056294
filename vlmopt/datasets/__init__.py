"""vlmopt.datasets: hub ids, image folders, manifests and saved datasets -> split ``dspy.Example`` lists.

``load_splits(cfg)`` is the entry point; ``images`` normalises single images for any caller.
"""

from vlmopt.datasets.errors import DatasetError, HubUnreachable
from vlmopt.datasets.images import BadImage, load_image, normalize_image, open_image, to_dspy_image
from vlmopt.datasets.loader import LoadedSplits, Skip, load_splits
from vlmopt.datasets.splits import SplitError

__all__ = [
    "BadImage",
    "DatasetError",
    "HubUnreachable",
    "LoadedSplits",
    "Skip",
    "SplitError",
    "load_image",
    "load_splits",
    "normalize_image",
    "open_image",
    "to_dspy_image",
]
