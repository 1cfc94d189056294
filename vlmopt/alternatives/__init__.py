"""Alternatives to prompt optimization, measured under the same held-out protocol.

Classic image classifiers (CLIP / SigLIP zero-shot and a linear probe) and LoRA fine-tuning of
the VLM itself (``finetune``): each writes a run directory whose ``metrics.json`` carries the
same metrics as an evaluate run, plus its cost (``kind``, ``wall_s``, ``parameters``, ...).
"""
