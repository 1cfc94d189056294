"""Random-weight, tiny CLIP and SigLIP checkpoints of the real architectures, built offline.

The baselines (``vlmopt.alternatives``) load a contrastive image-text model through
``AutoModel`` / ``AutoProcessor.from_pretrained`` as users do with ``openai/clip-vit-base-patch32``
or ``google/siglip-base-patch16-224``; tests need the same path without the hub. So, as for the
tiny VLMs, these are genuine checkpoints: the family's config classes at toy sizes, the byte-level
BPE tokenizer the tiny VLMs train (:func:`vlmopt.testing.tiny_vlm.common.train_tokenizer`) with the
family's special tokens and post-processing, the real image processor, all via ``save_pretrained``.

The families differ where their zero-shot rule does: CLIP pools the text at its end-of-text token
and scores ``exp(logit_scale) * cos``; SigLIP reads the last position of a ``max_length``-padded
sequence and adds ``logit_bias`` (sigmoid training). Both keep those quirks here.

Example::

    model_dir = build_tiny_clip("siglip", "/tmp/tiny-siglip", seed=0)
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import processors
from transformers import (
    AutoModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPProcessor,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipProcessor,
)

from vlmopt.testing.tiny_vlm.common import train_tokenizer, wrap_tokenizer

IMAGE_SIDE = 32
TEXT_LENGTH = 32
_TOWER = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
_CORPUS = ("a photo of a", "a picture of a", "an image of a", "a drawing of a", "a photo of the number")
_VISION_TOWER = {**_TOWER, "image_size": IMAGE_SIDE, "patch_size": 8}
FAMILIES = ("clip", "siglip")


def _text_tower(tokenizer, **ids) -> dict:
    """The text tower's config; the tokenizer pads on the right to the tower's length, as both families'."""
    tokenizer.padding_side = "right"
    tokenizer.model_max_length = TEXT_LENGTH
    return {**_TOWER, "vocab_size": len(tokenizer), "max_position_embeddings": TEXT_LENGTH, **ids}


def _clip(out_dir: Path, seed: int) -> tuple:
    raw = train_tokenizer(["<|endoftext|>", "<|startoftext|>"], _CORPUS)
    bos, eos = raw.token_to_id("<|startoftext|>"), raw.token_to_id("<|endoftext|>")
    raw.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)]
    )
    tokenizer = wrap_tokenizer(
        raw,
        "",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    config = CLIPConfig(
        text_config=_text_tower(tokenizer, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=_VISION_TOWER,
        projection_dim=16,
    )
    return config, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _siglip(out_dir: Path, seed: int) -> tuple:
    raw = train_tokenizer(["</s>", "<unk>"], _CORPUS)
    eos = raw.token_to_id("</s>")
    raw.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    tokenizer = wrap_tokenizer(raw, "", eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    config = SiglipConfig(
        text_config=_text_tower(tokenizer, pad_token_id=eos, eos_token_id=eos, bos_token_id=eos, projection_size=32),
        vision_config=_VISION_TOWER,
    )
    return config, SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)


_BUILDERS = {"clip": _clip, "siglip": _siglip}


def build_tiny_clip(family: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight tiny ``family`` (``clip`` or ``siglip``) checkpoint to ``out_dir``; return it."""
    if family not in _BUILDERS:
        raise ValueError(f"unknown tiny contrastive family {family!r}; valid names: {', '.join(FAMILIES)}")
    out_dir = Path(out_dir)
    config, processor = _BUILDERS[family](out_dir, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModel.from_config(config, dtype=torch.float32).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
