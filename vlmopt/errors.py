"""The base of every error a user can fix: the CLI prints it as one line and exits 2, never a traceback.

Each layer raises its own subclass where the problem is found (``ConfigError``, ``DatasetError``,
``ArtifactError``, ``RunDirError``, ``VLLMServerError`` ...), with a message that names the bad
item and the fix; the CLI catches ``VlmoptError`` in one place. This module imports nothing from
vlmopt (or anything else), so every layer can subclass it without an import cycle.

Example::

    class DatasetError(VlmoptError, ValueError): ...   # ValueError kept for callers that catch it

    raise DatasetError(f"image folder {path} holds no images; put them in <class_name>/ subfolders")
"""

from __future__ import annotations

OFFLINE_HINT = "To check the whole pipeline without the hub: vlmopt demo --offline"
"""The second line under a hub error: the path that needs no network."""


class VlmoptError(Exception):
    """A problem the user can fix; ``str(error)`` names the bad item and the fix, on one line.

    Class attributes a subclass may set, read by the CLI:
    ``prefix`` (the word before the message), ``exit_code``, ``hint`` (a second line, or None).
    """

    prefix = "error"
    exit_code = 2
    hint: str | None = None
