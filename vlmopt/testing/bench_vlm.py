"""A bench-size random-weight Idefics3: big enough that the model, not Python, dominates timings.

The tiny fixtures (``tiny_vlm``) are for correctness; benchmarks need a model whose forward pass
costs what a small real VLM's does. This one (about 65 M parameters at the defaults) shares the
tiny fixture's tokenizer and chat template, so vLLM and transformers load it the same way.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, GenerationConfig

from vlmopt.testing.tiny_vlm import build_idefics3


def build_bench_idefics3(out_dir: Path, *, hidden: int = 768, layers: int = 8, vision_hidden: int = 384,
                         vision_layers: int = 6, image_side: int = 256, seed: int = 0) -> Path:
    """A random-weight Idefics3 at bench size, sharing the tiny fixture's tokenizer and chat template.

    Heads are 64 wide (vLLM's CPU attention needs that); 16 px patches and the 2x pixel shuffle give
    (image_side / 32)^2 image tokens; images are never split, in transformers and in vLLM alike.
    """
    tiny = build_idefics3(out_dir / "tiny", seed)
    config = AutoConfig.from_pretrained(tiny)
    heads = hidden // 64
    config.text_config.update({"hidden_size": hidden, "intermediate_size": hidden * 8 // 3 // 64 * 64,
                               "num_hidden_layers": layers, "num_attention_heads": heads,
                               "num_key_value_heads": max(1, heads // 3), "head_dim": 64})
    config.vision_config.update({"hidden_size": vision_hidden, "intermediate_size": vision_hidden * 4,
                                 "num_hidden_layers": vision_layers, "num_attention_heads": vision_hidden // 64,
                                 "patch_size": 16, "image_size": image_side})
    processor = AutoProcessor.from_pretrained(tiny)
    processor.image_processor.size = {"longest_edge": image_side}
    processor.image_processor.max_image_size = {"longest_edge": image_side}
    processor.image_seq_len = (image_side // 16) ** 2 // config.scale_factor**2
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32).eval()
    model.generation_config = GenerationConfig.from_pretrained(tiny)
    target = out_dir / "model"
    model.save_pretrained(target)
    processor.save_pretrained(target)
    return target
