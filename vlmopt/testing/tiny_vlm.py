"""Random-weight, tiny VLMs of real architectures, built offline for tests and demos.

The Hugging Face hub is out of reach in tests, yet the code under test must run the same
loading path users run (``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained``)
and the same server (vLLM). So instead of mocks we write genuine checkpoints: the real config
classes (LFM2-VL, Idefics3/SmolVLM) at toy sizes, a byte-level BPE tokenizer trained here on a
small prompt corpus, the real image processors and a chat template — all via ``save_pretrained``.

Sizes are chosen for two consumers: CPU tests (build + load in seconds) and vLLM's CPU
attention, which only accepts certain head sizes, hence text ``head_dim`` 64 (hidden 128, 2
heads). One 64 px image becomes 16 image tokens; tiling/splitting is off, and configured so
that vLLM's own token-count arithmetic agrees with the HF processor.

Example::

    from vlmopt.testing.tiny_vlm import build_tiny_vlm
    model_dir = build_tiny_vlm("lfm2_vl", "/tmp/tiny-lfm2-vl", seed=0)

or ``python -m vlmopt.testing.tiny_vlm --arch idefics3 --out /tmp/tiny-smolvlm``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForImageTextToText,
    GenerationConfig,
    Idefics3Config,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Lfm2VlConfig,
    Lfm2VlImageProcessor,
    Lfm2VlProcessor,
    PreTrainedTokenizerFast,
)

VOCAB_SIZE = 2048
"""Upper bound for BPE training; the corpus is small, so the real vocabulary may end below it."""

TEXT_DIMS = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64,
             "max_position_embeddings": 4096}
"""Shared text-backbone sizes: head_dim 64 because vLLM's CPU attention rejects small heads."""

VISION_DIMS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
               "num_attention_heads": 1, "patch_size": 8}
"""Shared vision-tower sizes: one 64-wide head, 8 px patches (a 64 px image is an 8x8 grid)."""

IMAGE_SIDE = 64
"""Images are resized to IMAGE_SIDE px; with 8 px patches and 2x pixel-unshuffle: 16 tokens."""

LFM2_LAYER_TYPES = ["conv", "full_attention"]
"""LFM2 is a hybrid: gated short-convolution blocks plus a few attention blocks; keep one of each."""

_TOPICS = {
    "animal": ["cat", "dog", "bird", "horse", "cow", "sheep", "rabbit", "mouse", "fish", "frog",
               "lion", "tiger", "bear", "zebra", "monkey", "duck", "owl", "snake", "turtle", "pug"],
    "shape": ["circle", "square", "triangle", "star", "rectangle", "hexagon", "ellipse", "cross",
              "diamond", "heart"],
    "color": ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "pink",
              "brown", "gray", "cyan"],
    "landform": ["crater", "dune", "ridge", "channel", "mesa", "cliff", "slope streak",
                 "impact ejecta", "swiss cheese", "spider", "bright dune", "dark dune"],
    "action": ["running", "jumping", "walking", "sitting", "reading", "cooking", "swimming",
               "cycling", "dancing", "sleeping", "eating", "climbing"],
    "vehicle": ["car", "truck", "bus", "bicycle", "motorcycle", "train", "plane", "boat",
                "sedan", "coupe", "convertible", "pickup"],
}
_PHRASES = [
    "Classify the image.", "What is in this image?", "Is this a cat or a dog?",
    "Which shape is shown?", "What color is the shape?", "What is the person doing?",
    "Answer with one word.", "Respond with a JSON object.", "You are a helpful assistant.",
    "Look at the picture carefully and pick the best label.", "The answer is", "It is a",
    "Your input fields are:", "Your output fields are:", "1. `image` (Image):",
    "2. `label` (Literal):", "2. `reasoning` (str):", "All interactions will be structured in the "
    "following way, with the appropriate values filled in.",
    "In adhering to this structure, your objective is:", "Given the fields `image`, produce the "
    "fields `label`.", "[[ ## image ## ]]", "[[ ## label ## ]]", "[[ ## reasoning ## ]]",
    "[[ ## completed ## ]]", "Respond with the corresponding output fields, starting with the "
    "field `[[ ## label ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`.",
    "Let's think step by step in order to", "Outputs will be a JSON object with the following "
    "fields.", "must be one of:", "Not confident; the image is blurry, dark or cropped.",
    "The photo was taken outdoors in daylight.", "0 1 2 3 4 5 6 7 8 9 10 100 2024 0.5 0.97",
]
_PROSE = """\
A vision language model reads an image and a question, then writes an answer in plain text.
To turn such a model into a classifier we ask it to choose exactly one label from a fixed list,
and we check every answer against the list: anything else counts as an invalid output.
Good instructions are short, specific and describe what makes each class different from the
others. Examples help too: a few demonstrations with their correct labels often raise accuracy
more than a longer instruction does. We search over instructions and examples on a validation
split, and we report the final accuracy on a separate test split that the search never touched.
The camera on the factory line takes pictures of parts under bright light; a worker wants to
know whether each part is good, scratched, bent, missing a screw or covered in dust. A farmer
counts sheep in a field at dawn. A phone app tells which bird is singing in the garden, which
flower grows beside the road, or which dish is on the table at dinner. Satellite images show
rivers, forests, deserts, mountains, lakes, roads, bridges, fields, houses and the sea.
People in the photos may be standing, waving, holding a cup, playing guitar, riding a horse,
throwing a ball, painting a wall, typing on a laptop, talking on the phone or laughing together.
Cars differ by brand, model and year: small hatchbacks, family wagons, sports cars, vans and
trucks from many makers, old and new, clean or muddy, parked on the street or in a garage.
Please answer briefly. Do not explain your answer unless you are asked to reason first.
If you are unsure, choose the most likely label anyway; never invent a new label.
"""


def _corpus() -> list[str]:
    """Deterministic training text: prompts, DSPy-style field markers, captions and JSON answers."""
    lines = _PHRASES + _PROSE.splitlines()
    for topic, words in _TOPICS.items():
        lines.append(f"Pick one {topic}: " + ", ".join(f'"{word}"' for word in words) + ".")
        for word in words:
            lines += [
                f'{{"label": "{word}"}}', f'{{"{topic}": "{word}", "confidence": 0.9}}',
                f'{{"reasoning": "It looks like a {word}.", "label": "{word}"}}',
                f"The image shows a {word}.", f"A photo of a {word}.", f"This {topic} is a {word}.",
                f"[[ ## label ## ]]\n{word}\n\n[[ ## completed ## ]]", f"label: {word}",
            ]
    for color in _TOPICS["color"]:
        for shape in _TOPICS["shape"]:
            lines.append(f"A {color} {shape} on a plain background.")
    return lines


def _train_tokenizer(special_tokens: list[str], extra_corpus: Sequence[str] = ()) -> Tokenizer:
    """Byte-level BPE over the corpus (plus a task's own text); special tokens get the first ids, in order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus() + list(extra_corpus), trainer=trainer)
    return tokenizer


def _wrap_tokenizer(raw: Tokenizer, chat_template: str, **special: str) -> PreTrainedTokenizerFast:
    """Transformers tokenizer with left padding (what batched generation needs) and the template."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, padding_side="left", **special)
    tokenizer.chat_template = chat_template
    return tokenizer


def _save(out_dir: Path, model, processor, tokenizer) -> Path:
    """Write model, generation config and processor, the files vLLM and from_pretrained read."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def _init_model(config, seed: int):
    """Seeded random init, so a given seed always yields the same weights; the caller's RNG is untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()


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
    tokenizer = _wrap_tokenizer(
        _train_tokenizer(_LFM2_SPECIALS), _LFM2_TEMPLATE, pad_token="<|pad|>",
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
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    config = Lfm2VlConfig(
        text_config={"model_type": "lfm2", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "layer_types": LFM2_LAYER_TYPES, "block_auto_adjust_ff_dim": False},
        vision_config={"model_type": "siglip2_vision_model", **VISION_DIMS,
                       "num_patches": image_processor.max_num_patches, "vision_use_head": False},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_size=TEXT_DIMS["hidden_size"], downsample_factor=2,
        architectures=["Lfm2VlForConditionalGeneration"], **ids,
    )
    return _save(out_dir, _init_model(config, seed), processor, tokenizer)


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
    tokenizer = _wrap_tokenizer(
        _train_tokenizer(_IDEFICS3_SPECIALS, extra_corpus), _IDEFICS3_TEMPLATE, pad_token="<|im_end|>",
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
    ids = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    config = Idefics3Config(
        text_config={"model_type": "llama", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "rms_norm_eps": 1e-5, "tie_word_embeddings": False},
        vision_config={**VISION_DIMS, "image_size": IMAGE_SIDE},
        image_token_id=processor.image_token_id, scale_factor=scale_factor,
        architectures=["Idefics3ForConditionalGeneration"], **ids,
    )
    return _save(out_dir, _init_model(config, seed), processor, tokenizer)


BUILDERS: dict[str, Callable[[Path, int], Path]] = {
    "lfm2_vl": build_lfm2_vl,
    "idefics3": build_idefics3,
}
"""Architecture name (the HF ``model_type``) -> builder writing a checkpoint directory."""


def build_tiny_vlm(arch: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight tiny ``arch`` checkpoint to ``out_dir`` and return its path."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown tiny VLM arch {arch!r}; valid names: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[arch](Path(out_dir), seed)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m vlmopt.testing.tiny_vlm --arch idefics3 --out DIR [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.arch, args.out, seed=args.seed))


if __name__ == "__main__":
    main()
