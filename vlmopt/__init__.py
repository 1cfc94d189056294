"""vlmopt: optimize the prompt, not the weights, to turn a small local VLM into an image classifier."""

__version__ = "0.1.0"
