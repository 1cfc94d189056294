"""Tiny Gemma 3 (google/gemma-3-4b-it): SigLIP tower, avg-pool soft-token projector, Gemma 3 LM."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tokenizers import processors
from transformers import Gemma3Config, Gemma3ImageProcessor, Gemma3Processor, GenerationConfig

from vlmopt.testing.tiny_vlm.common import (
    GEMMA_NEWLINES,
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

GEMMA3_LAYER_TYPES = ["sliding_attention", "full_attention"]
"""Gemma 3 interleaves local (sliding-window) and global layers, 5:1; at 2 layers, one of each."""

SLIDING_WINDOW = 32
"""Shorter than any prompt, so the local layer really slides; longer than one image (16 + 2 tokens)."""

MM_TOKENS_PER_IMAGE = 16
"""Soft tokens per image: the 8x8 patch grid average-pooled 2x2 to 4x4, as 64x64 is pooled to 16x16."""

# Gemma 3: "<start_of_turn>user\n...<end_of_turn>\n" turns, the assistant is "model", the system prompt is
# prepended to the first user turn; as google/gemma-3-4b-it chat_template.json.
_GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- elif message['content'] is iterable -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}{{ raise_exception('Invalid content type') }}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
_GEMMA3_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                    "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
_GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}


def build_gemma3(out_dir: Path, seed: int) -> Path:
    """google/gemma-3-4b-it layout: SigLIP tower, avg-pool + RMSNorm soft-token projector, Gemma 3 LM.

    The template writes one ``<start_of_image>`` per image; the processor expands it to
    ``\\n\\n<start_of_image>`` + 16 ``<image_soft_token>`` + ``<end_of_image>\\n\\n`` (pan-and-scan off).
    """
    raw = train_tokenizer(_GEMMA3_SPECIALS, newline_tokens=GEMMA_NEWLINES)
    # The hub tokenizer adds <bos> itself (add_bos_token) although the template writes it too: kept, so that
    # an engine tokenizing the rendered prompt with special tokens on would be caught writing two.
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", raw.token_to_id("<bos>"))])
    tokenizer = wrap_tokenizer(
        raw, _GEMMA3_TEMPLATE, pad_token="<pad>", bos_token="<bos>",
        eos_token="<eos>", unk_token="<unk>", extra_special_tokens=_GEMMA3_NAMED,
    )
    patch = VISION_DIMS["patch_size"]
    image_processor = Gemma3ImageProcessor(
        size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        resample=2, do_pan_and_scan=False,  # 2 = bilinear, as the hub preprocessor_config.json
    )
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                image_seq_length=MM_TOKENS_PER_IMAGE, chat_template=_GEMMA3_TEMPLATE)
    ids = token_ids(tokenizer)
    # The projector pools the (IMAGE_SIDE / patch)^2 grid down to MM_TOKENS_PER_IMAGE: needs a whole kernel.
    assert (IMAGE_SIDE // patch) % math.isqrt(MM_TOKENS_PER_IMAGE) == 0
    config = Gemma3Config(
        text_config={"model_type": "gemma3_text", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "query_pre_attn_scalar": TEXT_DIMS["head_dim"], "sliding_window": SLIDING_WINDOW,
                     "layer_types": GEMMA3_LAYER_TYPES, "rms_norm_eps": 1e-6,
                     "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 8.0,
                                                            "rope_theta": 1_000_000.0},
                                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}},
        vision_config={"model_type": "siglip_vision_model", **VISION_DIMS, "image_size": IMAGE_SIDE,
                       "vision_use_head": False},
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE, image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id, eoi_token_index=tokenizer.eoi_token_id,
        architectures=["Gemma3ForConditionalGeneration"], **ids,
    )
    model = init_model(config, seed)
    # Gemma 3 starts the soft-token projection at zeros (made for checkpoints about to be trained), so a
    # random-weight model would ignore its images; seed it like the other weights.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight,
                              std=config.initializer_range)
    save(out_dir, model, processor, tokenizer)
    use_hub_vision_layout(out_dir)
    # Like the hub generation_config.json: generation ends at <eos> or at the end of the model's turn.
    end_of_turn = tokenizer.convert_tokens_to_ids("<end_of_turn>")
    GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=[tokenizer.eos_token_id, end_of_turn],
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out_dir)
    return out_dir
