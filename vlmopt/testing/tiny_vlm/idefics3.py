"""Tiny Idefics3 / SmolVLM (HuggingFaceTB): SigLIP tower, pixel-shuffle connector, Llama LM."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

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

# Idefics3 / SmolVLM: "User:<image>...<end_of_utterance>\nAssistant:" turns, as SmolVLM's template.
_IDEFICS3_TEMPLATE = (
    "<|im_start|>"
    "{%- for message in messages -%}"
    "{{- message['role'] | capitalize -}}"
    "{%- if message['content'] is string -%}{{- ': ' + message['content'] -}}"
    "{%- else -%}"
    "{%- if message['content'][0]['type'] in ['image', 'image_url'] -%}{{- ':' -}}"
    "{%- else -%}{{- ': ' -}}{%- endif -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] in ['image', 'image_url'] -%}{{- '<image>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<end_of_utterance>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
)
_IDEFICS3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<end_of_utterance>",
                      "<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)]


def build_idefics3(out_dir: Path, seed: int, *, extra_corpus: Sequence[str] = ()) -> Path:
    """SmolVLM / Idefics3 layout: SigLIP tower, pixel-shuffle connector, Llama LM.

    ``extra_corpus`` adds a task's prompts to the tokenizer's training text, so a model trained on
    that task (``micro_vlm``) reads them in few tokens.
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(_IDEFICS3_SPECIALS, extra_corpus), _IDEFICS3_TEMPLATE, pad_token="<|im_end|>",
        bos_token="<|im_start|>", eos_token="<end_of_utterance>", unk_token="<|endoftext|>",
        extra_special_tokens=_IDEFICS3_SPECIALS[4:],
    )
    # size == max_image_size: the image is never split, in the HF processor and in vLLM alike.
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": IMAGE_SIDE},
        max_image_size={"longest_edge": IMAGE_SIDE},
    )
    scale_factor = 2
    image_seq_len = (IMAGE_SIDE // VISION_DIMS["patch_size"]) ** 2 // scale_factor**2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=image_seq_len, chat_template=_IDEFICS3_TEMPLATE)
    ids = token_ids(tokenizer)
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
        vision_config={**VISION_DIMS, "image_size": IMAGE_SIDE},
        image_token_id=processor.image_token_id, scale_factor=scale_factor,
        architectures=["Idefics3ForConditionalGeneration"], **ids,
    )
    return save(out_dir, init_model(config, seed), processor, tokenizer)
