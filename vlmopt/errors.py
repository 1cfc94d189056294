"""The errors a user can act on, gathered for the CLI: each prints as one message, never a traceback.

Each layer raises its own error class where the problem is found (the config, the dataset, the
hub, the server, the run directory); this module only lists them, so the CLI's catch-all stays
one line and a new layer's error is added here once.
"""

from __future__ import annotations

import dspy

from vlmopt.artifacts import ArtifactError
from vlmopt.config import ConfigError
from vlmopt.datasets.errors import DatasetError, HubUnreachable
from vlmopt.evaluate import EvaluationInterrupted
from vlmopt.reports.run_dir import RunDirError
from vlmopt.serving.families import UnsupportedModelError
from vlmopt.serving.model_loading import HubUnreachableError, ModelNotFoundError
from vlmopt.serving.vllm_server import VLLMServerError

USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    ArtifactError,
    DatasetError,
    HubUnreachableError,
    ModelNotFoundError,
    RunDirError,
    EvaluationInterrupted,
    VLLMServerError,
    UnsupportedModelError,
    dspy.LMTransportError,  # an unreachable server: DSPy names host and port
    dspy.LMTimeoutError,
)

HUB_ERRORS: tuple[type[BaseException], ...] = (HubUnreachable, HubUnreachableError)
"""The hub could not be reached (for the dataset or the model): the CLI names the offline path."""

OFFLINE_HINT = "To check the whole pipeline without the hub: vlmopt demo --offline"
