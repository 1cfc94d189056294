"""Tiny SmolVLM2 (HuggingFaceTB): SigLIP tower, 4x pixel-shuffle connector, Llama (SmolLM2) LM.

SmolVLM2 is Idefics3's successor with its own model_type and classes; its chat template and
special tokens are Idefics3's, so they are imported from :mod:`.idefics3`. Its processor imports
``num2words`` (for video prompts) and refuses to load without it.
"""

from __future__ import annotations

from pathlib import Path

from transformers import SmolVLMConfig, SmolVLMImageProcessor, SmolVLMProcessor, SmolVLMVideoProcessor

from vlmopt.testing.tiny_vlm.common import (
    IMAGE_SIDE,
    TEXT_DIMS,
    VISION_DIMS,
    init_model,
    save,
    token_ids,
    train_tokenizer,
    wrap_tokenizer,
)
from vlmopt.testing.tiny_vlm.idefics3 import _IDEFICS3_SPECIALS, _IDEFICS3_TEMPLATE

SCALE_FACTOR = 4
"""SmolVLM2's pixel shuffle folds 4x4 patches into one token (Idefics3 uses 2): 8x8 patches -> 4 tokens."""


def build_smolvlm(out_dir: Path, seed: int) -> Path:
    """HuggingFaceTB SmolVLM2 layout: SigLIP tower, pixel-shuffle connector, Llama LM; no image splitting.

    The template is Idefics3's (SmolVLM2-256M-Video-Instruct's chat_template.json minus its video branch).
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(_IDEFICS3_SPECIALS), _IDEFICS3_TEMPLATE, pad_token="<|im_end|>",
        bos_token="<|im_start|>", eos_token="<end_of_utterance>", unk_token="<|endoftext|>",
        extra_special_tokens=_IDEFICS3_SPECIALS[4:],
    )
    # size == max_image_size: the image is never split, in the HF processor and in vLLM alike.
    sizes = {"size": {"longest_edge": IMAGE_SIDE}, "max_image_size": {"longest_edge": IMAGE_SIDE}}
    image_processor = SmolVLMImageProcessor(do_image_splitting=False, **sizes)
    image_seq_len = (IMAGE_SIDE // VISION_DIMS["patch_size"]) ** 2 // SCALE_FACTOR**2
    processor = SmolVLMProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=SmolVLMVideoProcessor(**sizes),
        image_seq_len=image_seq_len, chat_template=_IDEFICS3_TEMPLATE,
    )
    ids = token_ids(tokenizer)
    config = SmolVLMConfig(
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
        vision_config={**VISION_DIMS, "image_size": IMAGE_SIDE},
        image_token_id=processor.image_token_id, scale_factor=SCALE_FACTOR,
        architectures=["SmolVLMForConditionalGeneration"], **ids,
    )
    return save(out_dir, init_model(config, seed), processor, tokenizer)
