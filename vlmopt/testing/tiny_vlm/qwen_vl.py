"""Tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Qwen3.5 (Qwen): native-resolution ViT, 2x2 merger, Qwen LM, M-RoPE.

All four share the layout: the image is resized to a multiple of ``patch * merge`` px within a
pixel budget (no tiles), cut into patches, and every 2x2 patches merge into one LM token between
``<|vision_start|>`` and ``<|vision_end|>``; the LM places those tokens by 3D (time, row, column)
rotary positions, M-RoPE. They differ in the tower (Qwen2.5: windowed attention blocks; Qwen3:
learned position embeddings and "deepstack" features fed to early LM layers) and in the LM
(Qwen3: q/k norms, interleaved M-RoPE; Qwen3.5: a hybrid of Gated DeltaNet linear-attention and
gated full-attention layers, rotary on a quarter of each head, and a thinking chat template), so
each is built from its own config class.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, normalizers, pre_tokenizers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
    Qwen3_5Config,
    Qwen3VLConfig,
    Qwen3VLProcessor,
    Qwen3VLVideoProcessor,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_SPLIT
from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX as QWEN3_5_SPLIT

from vlmopt.testing.tiny_vlm.common import (
    IMAGE_SIDE,
    TEXT_DIMS,
    VISION_DIMS,
    init_model,
    save,
    train_tokenizer,
    wrap_tokenizer,
)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
"""Qwen's control tokens, in the hub vocabulary's order (ids 151643...)."""

MERGE = 2
"""Patches merged per side into one LM token (``spatial_merge_size``), as in every Qwen-VL."""

PATCH = VISION_DIMS["patch_size"]
FACTOR = PATCH * MERGE
"""Images are resized to multiples of this many px; one LM token covers FACTOR x FACTOR px."""

MIN_PIXELS = 4 * FACTOR**2
"""At least 2x2 tokens per image, the hub's floor too (56 * 56 px at 28 px per token)."""

MAX_PIXELS = IMAGE_SIDE**2
"""A 64 px image is 16 tokens, and no image (short of extreme aspect ratios) is more."""

# M-RoPE splits the head's rotary frequency pairs (head_dim / 2 = 32) between time, rows and columns,
# in the hub's proportions: Qwen2/2.5-VL [16, 24, 24] of 64, Qwen3-VL [24, 20, 20] of 64 (interleaved).
QWEN2_MROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [8, 12, 12]}
QWEN3_MROPE = {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [12, 10, 10],
               "mrope_interleaved": True}
# Qwen3.5 rotates a quarter of each head (16 of 64 dims: 8 pairs), split as the hub's [11, 11, 10] of 32.
QWEN3_5_MROPE = {"rope_type": "default", "rope_theta": 10_000_000.0, "mrope_section": [3, 3, 2],
                 "mrope_interleaved": True, "partial_rotary_factor": 0.25}


def _chatml_template(*, default_system: str | None, qwen3: bool) -> str:
    """Qwen's ChatML turns; an image part renders ``<|vision_start|><|image_pad|><|vision_end|>``.

    Qwen2/2.5-VL open with ``default_system`` unless the chat starts with a system turn, and render
    images in any turn. Qwen3-VL has no default system turn, keeps only a leading system turn (its
    text), and renders images only in user turns. ``add_vision_id`` prefixes "Picture N: " in both.
    """
    image = ("{%- set image_count.value = image_count.value + 1 -%}"
             "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
             "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}")
    is_image = "part['type'] == 'image' or 'image' in part or 'image_url' in part"
    shows_images = "message['role'] == 'user'" if qwen3 else "true"
    content = ("{%- if message['content'] is string -%}{{- message['content'] -}}"
               "{%- else -%}{%- for part in message['content'] -%}"
               f"{{%- if ({is_image}) -%}}{{%- if {shows_images} -%}}{image}{{%- endif -%}}"
               "{%- elif 'text' in part -%}{{- part['text'] -}}{%- endif -%}"
               "{%- endfor -%}{%- endif -%}")
    default = ("{%- if loop.first and message['role'] != 'system' -%}"
               f"{{{{- '<|im_start|>system\\n{default_system}<|im_end|>\\n' -}}}}{{%- endif -%}}"
               if default_system else "")
    skipped = "message['role'] == 'system' and not loop.first" if qwen3 else "false"
    return ("{%- set image_count = namespace(value=0) -%}"
            "{%- for message in messages -%}" + default +
            f"{{%- if not ({skipped}) -%}}"
            "{{- '<|im_start|>' + message['role'] + '\\n' -}}" + content + "{{- '<|im_end|>\\n' -}}"
            "{%- endif -%}{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


# as Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2.5-VL-3B-Instruct chat_template.json (video branch dropped)
QWEN2_TEMPLATE = _chatml_template(default_system="You are a helpful assistant.", qwen3=False)
# as Qwen/Qwen3-VL-2B-Instruct chat_template.json (tool and video branches dropped)
QWEN3_TEMPLATE = _chatml_template(default_system=None, qwen3=True)

# as Qwen/Qwen3.5-2B chat_template.jinja (tool and video branches dropped): content trimmed, a
# system turn only first and without images, earlier turns' reasoning dropped, and the generation
# prompt opens a <think> block unless enable_thinking=False (then it is empty and closed).
QWEN3_5_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}"
    "{%- macro render_content(content, do_vision_count, is_system_content=false) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content is iterable and content is not mapping -%}{%- for item in content -%}"
    "{%- if 'image' in item or 'image_url' in item or item.type == 'image' -%}"
    "{%- if is_system_content -%}{{- raise_exception('System message cannot contain images.') -}}{%- endif -%}"
    "{%- if do_vision_count -%}{%- set image_count.value = image_count.value + 1 -%}{%- endif -%}"
    "{%- if add_vision_id -%}{{- 'Picture ' ~ image_count.value ~ ': ' -}}{%- endif -%}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item.text -}}"
    "{%- else -%}{{- raise_exception('Unexpected item type in content.') -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- elif content is none or content is undefined -%}{{- '' -}}"
    "{%- else -%}{{- raise_exception('Unexpected content type.') -}}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if not messages -%}{{- raise_exception('No messages provided.') -}}{%- endif -%}"
    "{%- if messages[0].role == 'system' -%}"
    "{%- set content = render_content(messages[0].content, false, true)|trim -%}"
    "{{- '<|im_start|>system\n' + content + '<|im_end|>\n' -}}"
    "{%- endif -%}"
    "{%- set ns = namespace(last_query_index=-1) -%}"
    "{%- for message in messages -%}{%- if message.role == 'user' -%}"
    "{%- set ns.last_query_index = loop.index0 -%}{%- endif -%}{%- endfor -%}"
    "{%- if ns.last_query_index < 0 -%}{{- raise_exception('No user query found in messages.') -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- set content = render_content(message.content, true)|trim -%}"
    "{%- if message.role == 'system' -%}"
    "{%- if not loop.first -%}{{- raise_exception('System message must be at the beginning.') -}}{%- endif -%}"
    "{%- elif message.role == 'user' -%}{{- '<|im_start|>user\n' + content + '<|im_end|>\n' -}}"
    "{%- elif message.role == 'assistant' -%}"
    "{%- set reasoning_content = '' -%}"
    "{%- if message.reasoning_content is string -%}{%- set reasoning_content = message.reasoning_content -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\n') -%}"
    "{%- endif -%}"
    "{%- set reasoning_content = reasoning_content|trim -%}"
    "{%- if loop.index0 > ns.last_query_index -%}"
    "{{- '<|im_start|>assistant\n<think>\n' + reasoning_content + '\n</think>\n\n' + content -}}"
    "{%- else -%}{{- '<|im_start|>assistant\n' + content -}}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- else -%}{{- raise_exception('Unexpected message role.') -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\n\n</think>\n\n' -}}"
    "{%- else -%}{{- '<think>\n' -}}{%- endif -%}{%- endif -%}"
)


def _tokenizer(template: str, split_regex: str = QWEN2_SPLIT, words: tuple[str, ...] = ()):
    """Byte-level BPE with Qwen's control tokens; no BOS (Qwen has none), ``<|im_end|>`` ends a turn.

    The text is split as the hub ``tokenizer.json`` splits it (NFC, ``split_regex``, then bytes):
    for Qwen3.5, ``AutoTokenizer`` always rebuilds that pipeline (``Qwen3_5Tokenizer``) around the
    saved vocabulary, so a different one here would tokenize differently after loading. ``words``
    are added as ordinary (not special) tokens, as Qwen3.5's ``<think>``: decoding with
    ``skip_special_tokens`` keeps them, as it does with the hub tokenizer.
    """
    raw = train_tokenizer(QWEN_SPECIALS)
    raw.normalizer = normalizers.NFC()
    raw.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer = wrap_tokenizer(raw, template, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                               extra_special_tokens=QWEN_SPECIALS[1:])
    tokenizer.add_tokens(list(words), special_tokens=False)
    return tokenizer


def _processor(processor_class, video_processor_class, tokenizer, template: str, *, clip_norm: bool):
    """The family's processor; the pixel budget and patch sizes vLLM reads agree with the vision config."""
    norm = {} if clip_norm else {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    sizes = {"patch_size": PATCH, "temporal_patch_size": 2, "merge_size": MERGE}
    image_processor = Qwen2VLImageProcessor(size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
                                            **sizes, **norm)
    # Qwen3-VL's video budget covers all frames, Qwen2-VL's one frame; either way a few small frames.
    video_processor = video_processor_class(size={"shortest_edge": MIN_PIXELS, "longest_edge": 4 * MAX_PIXELS},
                                            **sizes, **norm)
    return processor_class(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                           chat_template=template)


def _token_ids(tokenizer) -> tuple[dict, dict]:
    """Special ids for the text config, and the vision placeholders for the top-level config."""
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": None, "eos_token_id": tokenizer.eos_token_id}
    vision = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return ids, vision


def _vision(**family) -> dict:
    """The shared tiny tower: VISION_DIMS width and patches, 2x2 merge into the LM width."""
    return {"depth": VISION_DIMS["num_hidden_layers"], "num_heads": VISION_DIMS["num_attention_heads"],
            "patch_size": PATCH, "spatial_merge_size": MERGE, "temporal_patch_size": 2, **family}


TOWER_WIDTHS = {"hidden_size": VISION_DIMS["hidden_size"], "intermediate_size": VISION_DIMS["intermediate_size"],
                "out_hidden_size": TEXT_DIMS["hidden_size"]}
"""Tower width, MLP width and merger output (the LM width), as Qwen2.5-VL / Qwen3-VL / Qwen3.5 name them."""

LEARNED_POSITIONS = (IMAGE_SIDE // PATCH) ** 2
"""Qwen3-VL / Qwen3.5: an 8x8 grid of learned patch positions (a 64 px image), interpolated to other grids."""


def _build(out_dir: Path, seed: int, config_class, processor_class, video_processor_class, *, template: str,
           clip_norm: bool, rope: dict, vision: dict, architecture: str, text: dict | None = None,
           split_regex: str = QWEN2_SPLIT, words: tuple[str, ...] = ()) -> Path:
    tokenizer = _tokenizer(template, split_regex, words)
    processor = _processor(processor_class, video_processor_class, tokenizer, template, clip_norm=clip_norm)
    ids, vision_ids = _token_ids(tokenizer)
    # The 2B/3B hub checkpoints tie the LM head to the embeddings.
    config = config_class(
        text_config={"vocab_size": len(tokenizer), **TEXT_DIMS, **ids, "rope_parameters": rope,
                     "tie_word_embeddings": True, **(text or {})},
        vision_config=_vision(**vision), tie_word_embeddings=True, architectures=[architecture], **vision_ids,
    )
    return save(out_dir, init_model(config, seed), processor, tokenizer)


def build_qwen2_vl(out_dir: Path, seed: int) -> Path:
    """Qwen2-VL layout: ViT (2D rotary) with a 2x2 MLP merger, Qwen2 LM with M-RoPE."""
    return _build(out_dir, seed, Qwen2VLConfig, Qwen2VLProcessor, Qwen2VLVideoProcessor, template=QWEN2_TEMPLATE,
                  clip_norm=True, rope=QWEN2_MROPE, architecture="Qwen2VLForConditionalGeneration",
                  vision={"embed_dim": VISION_DIMS["hidden_size"], "hidden_size": TEXT_DIMS["hidden_size"],
                          "mlp_ratio": VISION_DIMS["intermediate_size"] // VISION_DIMS["hidden_size"]})


def build_qwen2_5_vl(out_dir: Path, seed: int) -> Path:
    """Qwen2.5-VL layout: ViT with windowed attention except full-attention blocks, RMSNorm + SwiGLU."""
    return _build(out_dir, seed, Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLVideoProcessor,
                  template=QWEN2_TEMPLATE, clip_norm=True, rope=QWEN2_MROPE,
                  architecture="Qwen2_5_VLForConditionalGeneration",
                  # 32 px windows (2x2 LM tokens) in block 0, full attention in block 1: both paths run.
                  vision={**TOWER_WIDTHS, "window_size": 2 * FACTOR, "fullatt_block_indexes": [1]})


def build_qwen3_vl(out_dir: Path, seed: int) -> Path:
    """Qwen3-VL layout: ViT with learned (interpolated) position embeddings and deepstack, Qwen3 LM."""
    return _build(out_dir, seed, Qwen3VLConfig, Qwen3VLProcessor, Qwen3VLVideoProcessor, template=QWEN3_TEMPLATE,
                  clip_norm=False, rope=QWEN3_MROPE, architecture="Qwen3VLForConditionalGeneration",
                  # Block 0's features also feed LM layer 0 (deepstack).
                  vision={**TOWER_WIDTHS, "num_position_embeddings": LEARNED_POSITIONS,
                          "deepstack_visual_indexes": [0]})


def build_qwen3_5(out_dir: Path, seed: int) -> Path:
    """Qwen3.5 layout: Qwen3-VL's tower without deepstack; LM of Gated DeltaNet + gated attention layers."""
    return _build(out_dir, seed, Qwen3_5Config, Qwen3VLProcessor, Qwen3VLVideoProcessor, template=QWEN3_5_TEMPLATE,
                  clip_norm=False, rope=QWEN3_5_MROPE, architecture="Qwen3_5ForConditionalGeneration",
                  split_regex=QWEN3_5_SPLIT, words=("<think>", "</think>"),
                  # One linear-attention (recurrent state + short conv) and one full-attention layer,
                  # the hub's 3:1 pattern cut to 1:1; 64-wide linear heads, two value heads per key head.
                  text={"layer_types": ["linear_attention", "full_attention"], "linear_key_head_dim": 64,
                        "linear_value_head_dim": 64, "linear_num_key_heads": 1, "linear_num_value_heads": 2},
                  vision={**TOWER_WIDTHS, "num_position_embeddings": LEARNED_POSITIONS})
