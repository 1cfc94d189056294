"""Tiny Aya Vision (CohereForAI/aya-vision-8b): SigLIP tower, pixel-shuffle SwiGLU projector, Cohere2 LM.

Not served by vLLM 0.32: its model registry lists ``AyaVisionForConditionalGeneration`` only
among the architectures it dropped (last supported in vLLM 0.24), so this family runs on the
transformers engine alone.
"""

from __future__ import annotations

from pathlib import Path

from transformers import AyaVisionConfig, AyaVisionProcessor, GotOcr2ImageProcessor

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

COHERE2_LAYER_TYPES = ["sliding_attention", "full_attention"]
"""Cohere2 interleaves sliding-window and full-attention layers; keep one of each."""

DOWNSAMPLE = 2
"""The projector's pixel shuffle: 2x2 patches become one token, so a 64 px image is 16 tokens."""

# Aya Vision: Cohere turns, BOS from the template, an optional system turn (no default preamble),
# image parts as "<image>" in place; after CohereForAI/aya-vision-8b's chat template, whose prompt
# vLLM's aya-vision example spells out as
# "<|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>...<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>".
_AYA_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{{- '<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>' -}}"
    "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] -}}"
    "{%- else -%}{%- for part in messages[0]['content'] if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|END_OF_TURN_TOKEN|>' -}}"
    "{%- else -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- '<|START_OF_TURN_TOKEN|><|USER_TOKEN|>' -}}"
    "{%- else -%}{{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|END_OF_TURN_TOKEN|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' -}}{%- endif -%}"
)
_AYA_SPECIALS = ["<PAD>", "<UNK>", "<CLS>", "<SEP>", "<MASK_TOKEN>", "<BOS_TOKEN>", "<EOS_TOKEN>",
                 "<EOP_TOKEN>", "<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>", "<|USER_TOKEN|>",
                 "<|CHATBOT_TOKEN|>", "<|SYSTEM_TOKEN|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>",
                 "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE_GLOBAL"]
"""Cohere's tokens plus the image markers; "TILE_GLOBAL" is one token here, so an image takes exactly
the 16 + 3 tokens the processor's own arithmetic (``_get_num_multimodal_tokens``) counts."""


def build_aya_vision(out_dir: Path, seed: int) -> Path:
    """Aya Vision layout: SigLIP tower, 2x2 pixel shuffle + LayerNorm + SwiGLU MLP, Cohere2 LM.

    An image is ``<|START_OF_IMG|>TILE_GLOBAL`` + 16 ``<|IMG_PATCH|>`` + ``<|END_OF_IMG|>``: 19 tokens.
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(_AYA_SPECIALS), _AYA_TEMPLATE, pad_token="<PAD>", bos_token="<BOS_TOKEN>",
        eos_token="<|END_OF_TURN_TOKEN|>", unk_token="<UNK>", extra_special_tokens=_AYA_SPECIALS[13:17],
    )
    # AyaVisionProcessor forces crop_to_patches=True at call time; max_patches=1 keeps a single tile anyway.
    image_processor = GotOcr2ImageProcessor(
        size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, crop_to_patches=False, min_patches=1, max_patches=1,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    patch = VISION_DIMS["patch_size"]
    processor = AyaVisionProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   img_size=IMAGE_SIDE, downsample_factor=DOWNSAMPLE, chat_template=_AYA_TEMPLATE)
    ids = token_ids(tokenizer)
    config = AyaVisionConfig(
        text_config={"model_type": "cohere2", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "layer_types": COHERE2_LAYER_TYPES, "sliding_window": 4096, "tie_word_embeddings": True},
        vision_config={"model_type": "siglip_vision_model", **VISION_DIMS, "image_size": IMAGE_SIDE,
                       "vision_use_head": False},
        image_token_index=processor.image_token_id, downsample_factor=DOWNSAMPLE,
        alignment_intermediate_size=2 * TEXT_DIMS["hidden_size"], adapter_layer_norm_eps=1e-6,
        vision_feature_select_strategy="full", vision_feature_layer=-1,
        architectures=["AyaVisionForConditionalGeneration"], **ids,
    )
    return save(out_dir, init_model(config, seed), processor, tokenizer)
