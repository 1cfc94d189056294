"""vlmopt: optimize the prompt, not the weights, to turn a small local VLM into an image classifier."""

__version__ = "0.1.0"

import os as _os

# LiteLLM (under DSPy) otherwise fetches its model-cost map from the internet at import and waits
# 5 s for the timeout on offline hosts; the bundled copy is what a local VLM needs.
_os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
