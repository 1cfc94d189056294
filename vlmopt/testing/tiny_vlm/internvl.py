"""Tiny InternVL3 (OpenGVLab, transformers-native "-hf" layout): InternViT tower, pixel-shuffle MLP, Qwen2 LM."""

from __future__ import annotations

from pathlib import Path

from transformers import GotOcr2ImageProcessor, InternVLConfig, InternVLProcessor, InternVLVideoProcessor

from vlmopt.testing.tiny_vlm.common import (
    IMAGE_SIDE,
    TEXT_DIMS,
    VISION_DIMS,
    init_model,
    save,
    train_tokenizer,
    wrap_tokenizer,
)

# InternVL3-hf: plain ChatML, an image renders as "<IMG_CONTEXT>\n" (the processor expands it to
# "<img><IMG_CONTEXT>...</img>"); as OpenGVLab/InternVL3-1B-hf chat_template.json, video branch trimmed.
_INTERNVL_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}{{- '<IMG_CONTEXT>\n' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
# The Qwen2.5 specials InternVL keeps, then its image/grounding tokens; the processor finds the image
# tokens through the tokenizer's named specials (start_image_token, context_image_token ...).
_INTERNVL_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
                      "<quad>", "</quad>", "<ref>", "</ref>", "<box>", "</box>", "<video>"]
_INTERNVL_NAMED = {"start_image_token": "<img>", "end_image_token": "</img>",
                   "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}

DOWNSAMPLE_RATIO = 0.5
"""InternVL's pixel shuffle keeps one token per 2x2 patches, as the real checkpoints do."""


def build_internvl(out_dir: Path, seed: int) -> Path:
    """OpenGVLab InternVL3-hf layout: InternViT tower, pixel-shuffle + MLP projector, Qwen2 LM."""
    tokenizer = wrap_tokenizer(
        train_tokenizer(_INTERNVL_SPECIALS), _INTERNVL_TEMPLATE, pad_token="<|endoftext|>",
        eos_token="<|im_end|>", extra_special_tokens=_INTERNVL_NAMED,
    )
    size = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    # One 64 px tile per image: InternVLProcessor's class default turns crop_to_patches back on, so
    # max_patches=1 is what keeps HF (get_optimal_tiled_canvas) and vLLM (target ratios) at one tile.
    # ImageNet mean/std, as the -hf checkpoints' preprocessor_config.json.
    norm = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    image_processor = GotOcr2ImageProcessor(size=size, crop_to_patches=False, min_patches=1, max_patches=1, **norm)
    patch = VISION_DIMS["patch_size"]
    image_seq_length = int((IMAGE_SIDE // patch) ** 2 * DOWNSAMPLE_RATIO**2)
    processor = InternVLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=InternVLVideoProcessor(size=size, **norm),
        image_seq_length=image_seq_length, chat_template=_INTERNVL_TEMPLATE,
    )
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = InternVLConfig(
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-6, "tie_word_embeddings": False},
        vision_config={**VISION_DIMS, "image_size": IMAGE_SIDE, "attention_bias": True},
        image_token_id=processor.image_token_id, image_seq_length=image_seq_length,
        downsample_ratio=DOWNSAMPLE_RATIO, tie_word_embeddings=False,
        architectures=["InternVLForConditionalGeneration"], **ids,
    )
    return save(out_dir, init_model(config, seed), processor, tokenizer)
