"""Serving a fine-tuned artifact's LoRA adapter with vLLM: the flags ``vlmopt serve --lora`` adds.

vLLM serves an adapter beside its base model under a name of its own (``--lora-modules
name=path``); a request whose ``model`` is that name runs on the adapter. The artifact names the
adapter (``adapter.name``), so ``evaluate`` / ``predict --artifact`` ask for it by that name
(``artifacts.config_for_artifact``) and the serving-host check stays one command each side.
"""

from __future__ import annotations

import os

from vlmopt.artifacts import ArtifactError, load_artifact

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The ``--max-lora-rank`` values vLLM 0.32 accepts (``vllm.config.lora.MaxLoRARanks``)."""


def lora_server_args(artifact: str | os.PathLike[str]) -> tuple[list[str], str]:
    """(vLLM flags serving the artifact's verified LoRA adapter, the name it is served under)."""
    frozen = load_artifact(artifact)
    if frozen.adapter_dir is None:
        raise ArtifactError(
            f"{artifact}: this artifact has no LoRA adapter (it is a prompt); serve the model without --lora"
        )
    adapter = frozen.artifact.adapter
    rank = next((r for r in VLLM_LORA_RANKS if r >= adapter.rank), adapter.rank)
    return (
        ["--enable-lora", "--lora-modules", f"{adapter.name}={frozen.adapter_dir}", "--max-lora-rank", str(rank)],
        adapter.name,
    )
