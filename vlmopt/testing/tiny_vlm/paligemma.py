"""Tiny PaliGemma 2 (google/paligemma2-3b-pt-224): SigLIP tower, linear projector, Gemma 2 prefix-LM."""

from __future__ import annotations

from pathlib import Path

from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessor

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

GEMMA2_LAYER_TYPES = ["sliding_attention", "full_attention"]
"""Gemma 2 alternates local (sliding-window) and global layers, as PaliGemma 2's text config does."""

_PALIGEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]


def build_paligemma(out_dir: Path, seed: int) -> Path:
    """PaliGemma 2 layout: SigLIP tower, linear projector, Gemma 2 LM attending bidirectionally over the prefix.

    The processor adds PaliGemma's 1024 ``<locNNNN>`` and 128 ``<segNNN>`` tokens to the tokenizer, so the
    vocabulary is counted after it is built. ``token_type_ids`` (0 = prefix, 1 = suffix) come back from every
    processor call, and ``labels`` too (all -100 unless a ``suffix`` is given).
    """
    tokenizer = wrap_tokenizer(
        train_tokenizer(_PALIGEMMA_SPECIALS, newline_tokens=GEMMA_NEWLINES), None, pad_token="<pad>", bos_token="<bos>",
        eos_token="<eos>", unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
    )
    patch = VISION_DIMS["patch_size"]
    image_seq_length = (IMAGE_SIDE // patch) ** 2  # no pooling: one token per patch
    image_processor = SiglipImageProcessor(
        size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
        resample=3, image_seq_length=image_seq_length,  # 3 = bicubic, as the hub preprocessor_config.json
    )
    # Like the hub checkpoints, no chat template: the engine's model-family registry supplies one.
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    ids = token_ids(tokenizer)
    hidden = TEXT_DIMS["hidden_size"]
    config = PaliGemmaConfig(
        text_config={"model_type": "gemma2", "vocab_size": len(tokenizer), **TEXT_DIMS, **ids,
                     "query_pre_attn_scalar": TEXT_DIMS["head_dim"], "sliding_window": 4096,
                     "layer_types": GEMMA2_LAYER_TYPES, "attn_logit_softcapping": 50.0,
                     "final_logit_softcapping": 30.0, "hidden_activation": "gelu_pytorch_tanh"},
        vision_config={"model_type": "siglip_vision_model", **VISION_DIMS, "image_size": IMAGE_SIDE,
                       "vision_use_head": False},
        image_token_index=processor.image_token_id, vocab_size=len(tokenizer), projection_dim=hidden,
        hidden_size=hidden, architectures=["PaliGemmaForConditionalGeneration"], **ids,
    )
    save(out_dir, init_model(config, seed), processor, tokenizer)
    use_hub_vision_layout(out_dir)
    return out_dir
