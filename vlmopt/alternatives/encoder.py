"""A contrastive image-text model (CLIP, SigLIP) loaded through transformers, as unit-length embeddings.

Both baselines read the same two things from such a model: image embeddings (the linear probe's
features, the zero-shot query) and text embeddings (the zero-shot class prompts), each projected
and L2-normalised as the model was trained to compare them. The families differ in how a cosine
becomes a logit — CLIP ``exp(logit_scale) * cos``, SigLIP ``exp(logit_scale) * cos + logit_bias``
— and SigLIP's text tower reads the last position of a ``max_length``-padded sequence (its
training padding), so :class:`ContrastiveEncoder` keeps both rules with the model.

The checkpoint is found like a VLM's (:func:`vlmopt.serving.model_loading.locate_model`: a local
directory, a cached hub snapshot, or the hub when it answers) and loaded with ``AutoModel`` /
``AutoProcessor``, so any checkpoint with ``get_image_features`` / ``get_text_features`` and a
``logit_scale`` works (CLIP, SigLIP, SigLIP 2, MetaCLIP ...).

Example::

    encoder = ContrastiveEncoder.load("openai/clip-vit-base-patch32")
    images = encoder.encode_images([pil_a, pil_b])      # (2, 512), rows of norm 1
    texts = encoder.encode_texts(["a photo of a cat."])
    logits = encoder.logit_scale * images @ texts.T + encoder.logit_bias
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vlmopt.errors import VlmoptError
from vlmopt.serving.model_loading import ModelSource, locate_model, resolve_device, resolve_dtype

SIGMOID_FAMILIES = ("siglip", "siglip2")
"""``model_type``s trained with the sigmoid loss: text padded to ``max_length``, a ``logit_bias``."""
VISION_PREFIXES = ("vision_model.", "visual_projection.")
TEXT_PREFIXES = ("text_model.", "text_projection.")


class BaselineModelError(VlmoptError, ValueError):
    """The model given with ``--clip`` is not a contrastive image-text checkpoint."""


@dataclass
class ContrastiveEncoder:
    """A loaded CLIP-style model and processor, with the family's logit rule."""

    model: torch.nn.Module
    processor: object
    source: ModelSource
    device: torch.device

    @classmethod
    def load(
        cls, model_id: str, *, revision: str | None = None, device: str = "auto", dtype: str = "auto"
    ) -> ContrastiveEncoder:
        """Find and load ``model_id``; a checkpoint without image and text embeddings is refused by name."""
        from transformers import AutoModel, AutoProcessor

        source = locate_model(model_id, revision)
        target = resolve_device(device)
        model = AutoModel.from_pretrained(source.path, dtype=resolve_dtype(dtype, target))
        missing = [
            name for name in ("get_image_features", "get_text_features", "logit_scale") if not hasattr(model, name)
        ]
        if missing:
            raise BaselineModelError(
                f"{model_id!r} loads as {type(model).__name__}, which has no {', '.join(missing)}: --clip needs a "
                "contrastive image-text checkpoint (CLIP, SigLIP), e.g. openai/clip-vit-base-patch32"
            )
        return cls(model.to(target).eval(), AutoProcessor.from_pretrained(source.path), source, target)

    @property
    def family(self) -> str:
        return self.model.config.model_type

    @property
    def sigmoid(self) -> bool:
        """Trained with SigLIP's pairwise sigmoid loss (rather than CLIP's softmax over the batch)."""
        return self.family in SIGMOID_FAMILIES

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().exp().float())

    @property
    def logit_bias(self) -> float:
        bias = getattr(self.model, "logit_bias", None)
        return 0.0 if bias is None else float(bias.detach().float())

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the image side (what embedding an image runs), the text side, and in all."""
        counts = {"vision": 0, "text": 0, "total": 0}
        for name, weight in self.model.named_parameters():
            counts["total"] += weight.numel()
            for side, prefixes in (("vision", VISION_PREFIXES), ("text", TEXT_PREFIXES)):
                counts[side] += weight.numel() if name.startswith(prefixes) else 0
        return counts

    def bytes_per_parameter(self) -> int:
        return next(self.model.parameters()).element_size()

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """Unit-length image embeddings ``(n, d)`` and each image's share of its batch's seconds.

        The seconds cover preprocessing and the forward pass: what serving an image costs.
        """
        features, seconds = [], []
        for start in range(0, len(images), batch_size):
            batch = [image.convert("RGB") for image in images[start : start + batch_size]]
            began = time.perf_counter()
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            embedded = self.model.get_image_features(**inputs).pooler_output
            features.append(_unit(embedded))
            spent = time.perf_counter() - began
            seconds += [spent / len(batch)] * len(batch)
        return np.concatenate(features), np.asarray(seconds)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length text embeddings ``(n, d)``, padded the way the family was trained."""
        padding = "max_length" if self.sigmoid else True
        inputs = self.processor(text=list(texts), padding=padding, truncation=True, return_tensors="pt")
        inputs = inputs.to(self.device)
        return _unit(self.model.get_text_features(**inputs).pooler_output)


def _unit(embedded: torch.Tensor) -> np.ndarray:
    embedded = embedded.float()
    return (embedded / embedded.norm(p=2, dim=-1, keepdim=True)).cpu().numpy()
