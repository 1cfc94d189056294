"""Alternatives to a prompt-optimized VLM, measured under the same held-out protocol.

``run.py`` (``vlmopt baseline``): CLIP / SigLIP zero-shot with prompt ensembling (``zero_shot.py``)
and a scikit-learn linear probe on frozen image embeddings (``linear_probe.py``), both from one
contrastive model (``encoder.py``), embeddings kept per split for resume (``embeddings.py``), rows
and metrics written as every run's are (``records.py``). ``finetune.py`` (``vlmopt finetune``): LoRA
fine-tuning of the VLM itself (peft + TRL), its adapter served by ``lora_serving.py``. Importing
this package loads nothing heavy; each module imports what it needs.
"""
