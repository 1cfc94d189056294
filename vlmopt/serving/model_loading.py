"""Find, fingerprint and load a VLM checkpoint (hub id or local directory), failing fast and clearly.

A hub id that is not in the local cache while the hub is out of reach (``HF_HUB_OFFLINE=1``, no
network) must not hang in download retries or fall back to something else: it fails within
seconds, saying how to point ``model.id`` at a local directory instead. Whether the hub is off
limits is ``huggingface_hub``'s own answer (``is_offline_mode``: ``HF_HUB_OFFLINE`` or
``TRANSFORMERS_OFFLINE``, as read when it was imported), so vlmopt never calls the hub offline
while the library would still go out to it, nor the other way round.

The fingerprint goes into the DSPy model string, because DSPy's response cache keys on the
model string and not on the engine object: a hub snapshot is named by its commit, a local
directory by a hash of its files, so new weights never replay old answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmopt.errors import OFFLINE_HINT, VlmoptError
from vlmopt.serving.families import UnsupportedModelError, check_requirements, family_for_config
from vlmopt.serving.model_path import ModelSourceError, check_model_path

PROBE_TIMEOUT_S = 5.0
"""How long to wait for the hub before declaring it unreachable."""


class HubUnreachableError(VlmoptError, RuntimeError):
    """The model is a hub id, is not cached locally, and the hub cannot be reached."""

    hint = OFFLINE_HINT


@dataclass(frozen=True)
class ModelSource:
    """Where the checkpoint lives and which exact weights it holds."""

    name: str  # what the user asked for: hub id or directory
    path: Path  # local directory holding config, weights and processor files
    fingerprint: str  # hub commit, or sha256 prefix of a local directory's files


def _unreachable(model: str, reason: str) -> HubUnreachableError:
    return HubUnreachableError(
        f"Cannot load model {model!r}: the Hugging Face hub is unreachable ({reason}) and the model is not "
        "in the local cache. Download it on a machine with hub access (e.g. `hf download "
        f"{model} --local-dir /path/to/model`), copy the directory here, and set `model.id: /path/to/model` "
        "in the task config (or pass that directory to create_lm)."
    )


def locate_model(model: str, revision: str | None = None) -> ModelSource:
    """Resolve a hub id or directory to local files, downloading only when the hub answers."""
    local = Path(model).expanduser()
    if local.is_dir():
        if revision is not None:
            raise ModelSourceError(f"revision={revision!r} applies to hub ids; {model!r} is a local directory")
        return ModelSource(model, local.resolve(), directory_fingerprint(local))
    check_model_path(model)
    from huggingface_hub import HfApi, is_offline_mode, snapshot_download
    from huggingface_hub.errors import (
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = Path(snapshot_download(model, revision=revision, local_files_only=True))
        return ModelSource(model, path, path.name)
    except HFValidationError:
        raise ModelSourceError(
            f"model {model!r} is neither a local directory nor a hub id (owner/name): "
            "set model.id to an existing directory or a hub id"
        ) from None
    except LocalEntryNotFoundError:
        pass  # not cached: the hub decides below
    if is_offline_mode():
        raise _unreachable(model, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi().model_info(model, revision=revision, timeout=PROBE_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelSourceError(
            f"model {model!r} (revision {revision or 'main'}) does not exist on the hub: {exc}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - network errors come as several httpx/OS types
        raise _unreachable(model, f"{type(exc).__name__}: {exc}") from exc
    path = Path(snapshot_download(model, revision=info.sha))
    return ModelSource(model, path, info.sha or path.name)


def directory_fingerprint(directory: Path) -> str:
    """sha256 over the names and bytes of a checkpoint directory's files (12 hex digits)."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(str(file.relative_to(directory)).encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()[:12]


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype | str:
    """``auto``: the checkpoint's own dtype on accelerators, float32 on CPU (bf16 matmuls crawl there)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto" if device.type != "cpu" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', 'float32', 'bfloat16' or 'float16'")
    return resolved


class AdapterLoadError(VlmoptError, RuntimeError):
    """A LoRA adapter cannot be applied: peft is missing, or the directory is not an adapter for this model."""


def locate_adapter(adapter: str | Path) -> ModelSource:
    """A LoRA adapter directory (peft ``save_pretrained``) with the hash of its files."""
    path = Path(adapter).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise AdapterLoadError(f"{adapter!r} is not a LoRA adapter directory (no adapter_config.json): set "
                               "model.adapter to the adapter folder vlmopt finetune wrote")
    return ModelSource(str(adapter), path.resolve(), directory_fingerprint(path))


def merge_lora(model, adapter: ModelSource):
    """``model`` with the LoRA adapter merged into its weights (peft ``merge_and_unload``).

    Merged, the engine runs a plain model: label scoring, prefix reuse and each family's position
    handling need no adapter-aware path, and a forward costs what the base model's does.
    """
    try:
        from peft import PeftModel
    except ImportError:
        raise AdapterLoadError("a LoRA adapter needs peft: pip install 'vlmopt[finetune]'") from None
    try:
        return PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as exc:
        raise AdapterLoadError(f"cannot apply the LoRA adapter {adapter.name!r} to this model: {exc}") from exc


def load_model(source: ModelSource, *, dtype: str | torch.dtype = "auto", device: str = "auto",
               adapter: ModelSource | None = None):
    """``(model, processor, device, family)``: any ``AutoModelForImageTextToText`` with its ``AutoProcessor``.

    The family (``families``) is read from the config first, so that a missing extra package or
    chat template is one clear error before the processor or the weights load. ``adapter``: a LoRA
    adapter (``locate_adapter``) merged into the weights.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    family = family_for_config(AutoConfig.from_pretrained(source.path))
    check_requirements(family, source.name)
    target = resolve_device(device)
    processor = AutoProcessor.from_pretrained(source.path)
    if getattr(processor, "chat_template", None) is None:
        if family.default_chat_template is None:
            raise UnsupportedModelError(
                f"{source.name!r} ships no chat template, which vlmopt needs to render prompts: save the model's "
                f"template as chat_template.jinja in {source.path}"
            )
        processor.chat_template = family.default_chat_template
    model = AutoModelForImageTextToText.from_pretrained(source.path, dtype=resolve_dtype(dtype, target))
    if adapter is not None:
        model = merge_lora(model, adapter)
    return model.to(target).eval(), processor, target, family
