"""Tiny Mistral Small 3.1 (mistralai, HF format): Pixtral tower, patch-merger projector, Mistral LM."""

from __future__ import annotations

from pathlib import Path

from transformers import Mistral3Config, PixtralImageProcessor, PixtralProcessor

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

# Mistral v7 "tekken" turns: BOS, one [SYSTEM_PROMPT] block (a default one when the chat has none),
# then [INST]...[/INST] per user turn and "answer</s>" per assistant turn; there is no generation
# prompt, the model answers right after [/INST]. As mistralai/Mistral-Small-3.1-24B-Instruct-2503
# chat_template.json, with the default system text shortened and its strftime_now() date dropped, so a
# prompt renders the same on every day.
_MISTRAL3_TEMPLATE = (
    "{%- set default_system_message = 'You are a helpful assistant.' -%}"
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system_message = messages[0]['content'] -%}"
    "{%- else -%}{%- set system_message = messages[0]['content'][0]['text'] -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = default_system_message -%}{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if message['content'] is string -%}{{- '[INST]' + message['content'] + '[/INST]' -}}"
    "{%- else -%}{{- '[INST]' -}}{%- for block in message['content'] -%}"
    "{%- if block['type'] == 'text' -%}{{- block['text'] -}}"
    "{%- elif block['type'] in ['image', 'image_url'] -%}{{- '[IMG]' -}}"
    "{%- else -%}{{- raise_exception('Only text and image blocks are supported in message content!') -}}"
    "{%- endif -%}{%- endfor -%}{{- '[/INST]' -}}{%- endif -%}"
    "{%- elif message['role'] == 'system' -%}"
    "{%- if message['content'] is string -%}{{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' -}}"
    "{%- else -%}{{- '[SYSTEM_PROMPT]' + message['content'][0]['text'] + '[/SYSTEM_PROMPT]' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- if message['content'] is string -%}{{- message['content'] + eos_token -}}"
    "{%- else -%}{{- message['content'][0]['text'] + eos_token -}}{%- endif -%}"
    "{%- else -%}{{- raise_exception('Only user, system and assistant roles are supported!') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# The tekken control tokens in their hub order, so ids match the real vocabulary ([IMG] = 10, <pad> = 11).
_MISTRAL3_SPECIALS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                      "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]",
                      "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                      "[TOOL_CONTENT]"]

SPATIAL_MERGE_SIZE = 2
"""Mistral3's patch merger folds 2x2 Pixtral patches into one token, as the real checkpoint does."""


def build_mistral3(out_dir: Path, seed: int) -> Path:
    """mistralai Mistral-Small-3.1 (HF) layout: Pixtral tower, 2x2 patch merger, Mistral LM.

    Pixtral keeps the aspect ratio: an image is shrunk to fit ``IMAGE_SIDE`` (never enlarged) and
    padded up to whole 16 px merged patches, one ``[IMG]`` per merged patch, an ``[IMG_BREAK]`` after
    each row and ``[IMG_END]`` last, so a 64 px square is 4x4 + 4 = 20 tokens and smaller or thinner
    images fewer. vLLM recomputes the grid from ``size["longest_edge"]`` and the vision
    ``patch_size`` times ``spatial_merge_size``; the processor's ``patch_size`` must equal the vision one.
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(_MISTRAL3_SPECIALS), _MISTRAL3_TEMPLATE, pad_token="<pad>", bos_token="<s>",
        eos_token="</s>", unk_token="<unk>", extra_special_tokens=_MISTRAL3_SPECIALS[3:],
    )
    patch = VISION_DIMS["patch_size"]
    image_processor = PixtralImageProcessor(
        size={"longest_edge": IMAGE_SIDE}, patch_size={"height": patch, "width": patch},
    )
    processor = PixtralProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        spatial_merge_size=SPATIAL_MERGE_SIZE, chat_template=_MISTRAL3_TEMPLATE,
    )
    ids = token_ids(tokenizer)
    config = Mistral3Config(
        text_config={"model_type": "mistral", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-5, "sliding_window": None, "tie_word_embeddings": False},
        vision_config={"model_type": "pixtral", **VISION_DIMS, "image_size": IMAGE_SIDE},
        image_token_index=processor.image_token_id, spatial_merge_size=SPATIAL_MERGE_SIZE,
        tie_word_embeddings=False, architectures=["Mistral3ForConditionalGeneration"], **ids,
    )
    return save(out_dir, init_model(config, seed), processor, tokenizer)
