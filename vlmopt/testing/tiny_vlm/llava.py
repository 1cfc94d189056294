"""Tiny LLaVA (llava-hf): LLaVA-1.5 (CLIP tower, MLP projector, Llama LM) and OneVision (SigLIP, Qwen2).

LLaVA-1.5 is ``llava-hf/llava-1.5-7b-hf``: one center-cropped square per image, CLIP's CLS token
dropped (``vision_feature_select_strategy="default"``). LLaVA-OneVision is
``llava-hf/llava-onevision-qwen2-0.5b-ov-hf``: "anyres" tiling, here cut down to its smallest form
(one grid pinpoint, the base resolution), so a lone image is the base view plus one unpadded crop.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPImageProcessor,
    LlavaConfig,
    LlavaOnevisionConfig,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
)

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

# LLaVA-1.5: "USER: <image>\n... ASSISTANT:", images before text in each turn, system text bare;
# as llava-hf/llava-1.5-7b-hf chat_template.json.
_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]

# LLaVA-OneVision: ChatML turns, "<image>\n" per image before the turn's text, no default system
# prompt; as llava-hf/llava-onevision-qwen2-0.5b-ov-hf chat_template.json (video branch dropped).
_ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}"
    "{% endif %}"
    "{{'<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_ONEVISION_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

ONEVISION_PATCH = 16
"""OneVision's SigLIP patch: a 64 px view is a 4x4 grid, so base + crop + newlines stay <= 36 tokens."""


def build_llava(out_dir: Path, seed: int) -> Path:
    """LLaVA-1.5 layout: CLIP tower (CLS dropped, second-to-last layer), 2-layer GELU MLP, Llama LM."""
    tokenizer = wrap_tokenizer(
        train_tokenizer(_LLAVA_SPECIALS), _LLAVA_TEMPLATE, pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", unk_token="<unk>", extra_special_tokens=["<image>"],
    )
    # Resize the short side, then center-crop a square: every image is IMAGE_SIDE x IMAGE_SIDE.
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIDE},
                                         crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    patch = VISION_DIMS["patch_size"]
    # CLIP emits CLS + 8x8 patches; "default" drops the CLS, so the processor adds it (+1) then removes it.
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=_LLAVA_TEMPLATE)
    ids = token_ids(tokenizer)
    config = LlavaConfig(
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
        vision_config={"model_type": "clip_vision_model", **VISION_DIMS, "image_size": IMAGE_SIDE,
                       "projection_dim": VISION_DIMS["hidden_size"]},
        image_token_index=processor.image_token_id, image_seq_length=(IMAGE_SIDE // patch) ** 2,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
        architectures=["LlavaForConditionalGeneration"], **ids,
    )
    save(out_dir, init_model(config, seed), processor, tokenizer)
    use_hub_vision_layout(out_dir)
    return out_dir


def build_llava_onevision(out_dir: Path, seed: int) -> Path:
    """LLaVA-OneVision layout: SigLIP tower, 2-layer GELU MLP, image-newline embedding, Qwen2 LM.

    Tiling is at its minimum: the only grid pinpoint is the base resolution, so a lone image is the
    resized view (4x4 tokens) plus one crop, unpadded to the image's aspect ratio with a newline per
    row: 16-36 tokens (48x40: 36, 100x30: 26, 20x90: 20), the same count in the processor, the model
    and vLLM's arithmetic. With anyres_max_9 (the hub value) and a 1x1 grid the crop is never
    downscaled. When one prompt's images are passed as a nested list and there are several, each is
    sent as its padded square only (16 + 1 newline tokens), as with the real checkpoint; vLLM
    passes images flat and tiles every one.
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(_ONEVISION_SPECIALS), _ONEVISION_TEMPLATE, pad_token="<|endoftext|>",
        eos_token="<|im_end|>", extra_special_tokens=["<image>", "<video>"],
    )
    pinpoints = [[IMAGE_SIDE, IMAGE_SIDE]]
    views = {"size": {"height": IMAGE_SIDE, "width": IMAGE_SIDE}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}
    image_processor = LlavaOnevisionImageProcessor(image_grid_pinpoints=pinpoints, **views)
    grid = IMAGE_SIDE // ONEVISION_PATCH
    # The processor class requires a video processor; videos are never sent, it only has to load.
    processor = LlavaOnevisionProcessor(
        image_processor=image_processor, video_processor=LlavaOnevisionVideoProcessor(**views),
        tokenizer=tokenizer, num_image_tokens=grid**2,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        chat_template=_ONEVISION_TEMPLATE,
    )
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = LlavaOnevisionConfig(
        text_config={"model_type": "qwen2", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
        vision_config={"model_type": "siglip_vision_model", **VISION_DIMS, "patch_size": ONEVISION_PATCH,
                       "image_size": IMAGE_SIDE, "vision_use_head": False},
        image_token_index=processor.image_token_id, video_token_index=processor.video_token_id,
        image_grid_pinpoints=pinpoints, vision_aspect_ratio="anyres_max_9",
        vision_feature_select_strategy="full", vision_feature_layer=-1, tie_word_embeddings=True,
        architectures=["LlavaOnevisionForConditionalGeneration"], **ids,
    )
    save(out_dir, init_model(config, seed), processor, tokenizer)
    use_hub_vision_layout(out_dir)
    return out_dir
