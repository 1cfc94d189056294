"""Tiny LFM2-VL (LiquidAI): SigLIP2 NaFlex tower, pixel-unshuffle projector, LFM2 hybrid LM."""

from __future__ import annotations

from pathlib import Path

from transformers import Lfm2VlConfig, Lfm2VlImageProcessor, Lfm2VlProcessor

from vlmopt.testing.tiny_vlm.common import (
    IMAGE_SIDE,
    TEXT_DIMS,
    VISION_DIMS,
    init_model,
    save,
    token_ids,
    train_tokenizer,
    use_hub_vision_layout,
    wrap_tokenizer,
)

LFM2_LAYER_TYPES = ["conv", "full_attention"]
"""LFM2 is a hybrid: gated short-convolution blocks plus a few attention blocks; keep one of each."""

# LFM2-VL: ChatML turns, BOS from the template (the processor tokenizes with add_special_tokens=False).
_LFM2_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)
_LFM2_SPECIALS = ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                  "<image>", "<|image_start|>", "<|image_end|>", "<|img_thumbnail|>"] + [
    f"<|img_row_{row}_col_{col}|>" for row in range(1, 7) for col in range(1, 7)]


def build_lfm2_vl(out_dir: Path, seed: int) -> Path:
    """LiquidAI LFM2-VL layout: SigLIP2 NaFlex tower, pixel-unshuffle projector, LFM2 hybrid LM."""
    tokenizer = wrap_tokenizer(
        train_tokenizer(_LFM2_SPECIALS), _LFM2_TEMPLATE, pad_token="<|pad|>",
        bos_token="<|startoftext|>", eos_token="<|im_end|>",
        extra_special_tokens=_LFM2_SPECIALS[5:],
    )
    patch = VISION_DIMS["patch_size"]
    image_processor = Lfm2VlImageProcessor(
        encoder_patch_size=patch, downsample_factor=2, tile_size=IMAGE_SIDE,
        size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        # No tiling; min_tiles == max_tiles == 1 is the switch vLLM reads.
        do_image_splitting=False, min_tiles=1, max_tiles=1, use_thumbnail=False,
        min_image_tokens=4, max_image_tokens=(IMAGE_SIDE // patch // 2) ** 2,
    )
    processor = Lfm2VlProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=_LFM2_TEMPLATE)
    ids = token_ids(tokenizer)
    config = Lfm2VlConfig(
        text_config={"model_type": "lfm2", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "layer_types": LFM2_LAYER_TYPES, "block_auto_adjust_ff_dim": False,
                     # the hub config states them (vLLM's lfm2 reads them; transformers 5.24 derives them)
                     "conv_dim": TEXT_DIMS["hidden_size"], "conv_dim_out": TEXT_DIMS["hidden_size"],
                     "block_dim": TEXT_DIMS["hidden_size"]},
        vision_config={"model_type": "siglip2_vision_model", **VISION_DIMS,
                       "num_patches": image_processor.max_num_patches, "vision_use_head": False},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_size=TEXT_DIMS["hidden_size"], downsample_factor=2,
        architectures=["Lfm2VlForConditionalGeneration"], **ids,
    )
    save(out_dir, init_model(config, seed), processor, tokenizer)
    use_hub_vision_layout(out_dir)
    return out_dir
