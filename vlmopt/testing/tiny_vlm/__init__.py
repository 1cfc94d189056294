"""Random-weight, tiny VLMs of real architectures, built offline for tests and demos.

The Hugging Face hub is out of reach in tests, yet the code under test must run the same
loading path users run (``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained``)
and the same server (vLLM). So instead of mocks we write genuine checkpoints: each family's real
config classes at toy sizes, a byte-level BPE tokenizer trained here on a small prompt corpus,
the real image processors and the family's chat template — all via ``save_pretrained``.

Sizes are chosen for two consumers: CPU tests (build + load in seconds) and vLLM's CPU
attention, which only accepts certain head sizes, hence text ``head_dim`` 64 (hidden 128, 2
heads). Images are 64 px; tiling/splitting is off, and configured so that vLLM's own
token-count arithmetic agrees with the HF processor.

One module per family (``idefics3.py``, ``qwen_vl.py`` ...); :data:`BUILDERS` names them by the
HF ``model_type`` and imports a family only when it is built.

Example::

    from vlmopt.testing.tiny_vlm import build_tiny_vlm
    model_dir = build_tiny_vlm("lfm2_vl", "/tmp/tiny-lfm2-vl", seed=0)

or ``python -m vlmopt.testing.tiny_vlm --arch idefics3 --out /tmp/tiny-smolvlm``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from vlmopt.testing.tiny_vlm.idefics3 import build_idefics3

BUILDERS: dict[str, str] = {
    "aya_vision": "aya_vision:build_aya_vision",
    "gemma3": "gemma3:build_gemma3",
    "idefics3": "idefics3:build_idefics3",
    "internvl": "internvl:build_internvl",
    "lfm2_vl": "lfm2_vl:build_lfm2_vl",
    "llava": "llava:build_llava",
    "llava_onevision": "llava:build_llava_onevision",
    "mistral3": "mistral3:build_mistral3",
    "paligemma": "paligemma:build_paligemma",
    "qwen2_5_vl": "qwen_vl:build_qwen2_5_vl",
    "qwen2_vl": "qwen_vl:build_qwen2_vl",
    "qwen3_5": "qwen_vl:build_qwen3_5",
    "qwen3_vl": "qwen_vl:build_qwen3_vl",
    "smolvlm": "smolvlm:build_smolvlm",
}
"""Architecture name (the HF ``model_type``) -> ``module:function`` in this package writing a checkpoint."""


def build_tiny_vlm(arch: str, out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write a random-weight tiny ``arch`` checkpoint to ``out_dir`` and return its path."""
    if arch not in BUILDERS:
        raise ValueError(f"unknown tiny VLM arch {arch!r}; valid names: {', '.join(sorted(BUILDERS))}")
    module, function = BUILDERS[arch].split(":")
    builder = getattr(importlib.import_module(f"{__name__}.{module}"), function)
    return builder(Path(out_dir), seed)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m vlmopt.testing.tiny_vlm --arch idefics3 --out DIR [--seed N]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=sorted(BUILDERS))
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_vlm(args.arch, args.out, seed=args.seed))


__all__ = ["BUILDERS", "build_idefics3", "build_tiny_vlm", "main"]
