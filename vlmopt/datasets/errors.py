"""Errors of the dataset loader: each message names the source, the column or the item to fix."""


class DatasetError(ValueError):
    """The dataset cannot be used as configured (missing column, too few items, bad source)."""


class HubUnreachable(DatasetError, ConnectionError):
    """A hub id was asked for but the Hugging Face Hub cannot be reached (offline or no network)."""
