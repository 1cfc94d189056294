"""What every tiny family checkpoint shares: sizes, the locally trained tokenizer, seeded init, saving.

A family module (``idefics3.py``, ``qwen_vl.py`` ...) picks its real config, processor and chat
template, and calls :func:`train_tokenizer`, :func:`wrap_tokenizer`, :func:`init_model` and
:func:`save` from here, so every checkpoint is built, seeded and written the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForImageTextToText, GenerationConfig, PreTrainedTokenizerFast

GEMMA_NEWLINES = tuple("\n" * n for n in range(1, 5))
"""Gemma vocabularies hold runs of newlines as tokens; vLLM's Gemma 3 processing looks up one to four."""

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


def train_tokenizer(special_tokens: list[str], extra_corpus: Sequence[str] = (), *,
                    newline_tokens: Sequence[str] = ()) -> Tokenizer:
    """Byte-level BPE over the corpus (plus a task's own text); special tokens get the first ids, in order.

    ``newline_tokens``: runs of newlines as vocabulary entries of their own, as in Gemma's
    vocabularies ("\n", "\n\n"); vLLM's Gemma 3 processing looks them up by those strings, which
    byte-level BPE would spell "Ċ", "ĊĊ".
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(_corpus() + list(extra_corpus), trainer=trainer)
    tokenizer.add_tokens([AddedToken(text, normalized=False) for text in newline_tokens])
    return tokenizer


def wrap_tokenizer(raw: Tokenizer, chat_template: str, **special: str) -> PreTrainedTokenizerFast:
    """Transformers tokenizer with left padding (what batched generation needs) and the template."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, padding_side="left", **special)
    tokenizer.chat_template = chat_template
    return tokenizer


def token_ids(tokenizer) -> dict[str, int | None]:
    """The pad / BOS / EOS ids a family's configs repeat (top level and text config)."""
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def save(out_dir: Path, model, processor, tokenizer) -> Path:
    """Write model, generation config and processor, the files vLLM and from_pretrained read."""
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def use_hub_vision_layout(out_dir: Path) -> None:
    """Name a CLIP/SigLIP tower's saved weights ``vision_tower.vision_model.*``, as hub checkpoints do.

    transformers 5.24 saves these towers without the ``vision_model.`` level and loads both forms;
    vLLM 0.32 loads only the hub's ("There is no module or parameter named 'vision_tower.embeddings'").
    """
    path = out_dir / "model.safetensors"
    weights = load_file(path)
    renamed = {k if "vision_tower.vision_model." in k else k.replace("vision_tower.", "vision_tower.vision_model.", 1):
               v for k, v in weights.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def init_model(config, seed: int):
    """Seeded random init, so a given seed always yields the same weights; the caller's RNG is untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()


