"""Shared-prefix reuse in-process: what every query of a program shares runs through the model once.

An optimized program's prompt is ``[system: instruction] [demo turns, images and answers] [query
turn]``. Everything before the query turn is the same for every image the program classifies, so
the engine runs it once, keeps the model's cache, and runs each query on top of a copy — the
in-process counterpart of vLLM's automatic prefix caching. Four few-shot image demos then cost
their prefill once per program, not once per image and label.

**Where a prompt splits** (:func:`split_prompt`, in the caller's thread). The chat template renders
the same conversation a second time with a probe in place of the final user turn; the two renders
agree up to where that turn begins. The split is moved back to just after the last special token
before it (text after a special token tokenizes alone as it does in context), and the prefix's
images are those of the earlier turns. Two checks keep a split honest, else the request runs
whole, exactly as without reuse:

* per request, the tokenizer's ids for prefix + suffix text must equal those of the whole prompt;
* once per prefix, the processor's ids for prefix + suffix (images expanded to their tokens) must
  equal those of the whole prompt. This catches processors that expand an image differently when
  other images share the prompt (LLaVA-OneVision shows each image as its base view only then).

Families whose prompt attends bidirectionally (PaliGemma: the whole prompt is one prefix-LM block,
so the demos' keys depend on the query) never split (``ModelFamily.prefix_reuse``).

**Running on a prefix** (``prefix_runs.prefill_on_prefix``). Queries that share a prefix and whose suffixes
have the same token count run as one batch without padding: the prefix cache is copied and
repeated per row, and the suffixes (their images only) run on top. No padding anywhere keeps the
hybrid families exact (LFM2's short convolutions and Qwen3.5's linear attention carry state from
the last tokens; a pad between prefix and suffix would enter it). Positions continue from the
prefix: sequential families by the cache length; M-RoPE families from the whole prompt's 3-D
positions (``get_rope_index`` over prefix + suffix, as one unsplit forward computes them), whose
``rope_deltas`` are left on the model for the answer tokens that follow.

**Memory and keys** (:class:`PrefixCache`). An LRU of prefix caches under a byte budget (the
tensors' bytes, measured); a prefix larger than the budget is not kept. The key is the prefix
text and the sha256 of each prefix image's pixels, so another instruction or one changed demo is
a miss. A cache belongs to one engine, which serves one model, dtype and device: they need no
place in the key.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vlmopt.serving.chat_inputs import ChatInput

PROBE = "\x00vlmopt-probe\x00"
"""Text of the stand-in final turn: no template or tokenizer writes it."""

DEFAULT_BUDGET_MB = 1024
"""Prefix caches one engine keeps, in MiB of tensors (four 256 px demos of LFM2-VL-450M: ~50 MiB)."""


@dataclass(frozen=True)
class PromptSplit:
    """One prompt cut where its final user turn begins."""

    prefix: str
    suffix: str
    prefix_images: tuple[Image.Image, ...]
    suffix_images: tuple[Image.Image, ...]
    key: tuple  # (prefix text, sha256 of each prefix image)


def split_prompt(processor, chat: ChatInput, prompt: str, special_tokens: tuple[str, ...],
                 **template_kwargs) -> PromptSplit | None:
    """Where ``prompt`` (the rendered ``chat``) splits into shared prefix and query; None: it does not."""
    if len(chat.messages) < 2 or chat.messages[-1]["role"] != "user":
        return None
    probe = [*chat.messages[:-1], {"role": "user", "content": [{"type": "text", "text": PROBE}]}]
    try:
        other = processor.apply_chat_template(probe, add_generation_prompt=True, tokenize=False, **template_kwargs)
    except Exception:  # noqa: BLE001 - a template that refuses the probe just gets no reuse
        return None
    common = os.path.commonprefix([prompt, other])
    shown = sum(part.get("type") == "image" for message in chat.messages[:-1]
                for part in message["content"] if isinstance(part, dict))
    image_token = getattr(processor, "image_token", None)
    whole = _ids(processor.tokenizer, prompt)
    for cut in _cuts(common, special_tokens):
        prefix, suffix = prompt[:cut], prompt[cut:]
        if image_token is None or prefix.count(image_token) != shown:
            return None
        if _ids(processor.tokenizer, prefix) + _ids(processor.tokenizer, suffix) == whole:
            break
    else:
        return None
    prefix_images, suffix_images = tuple(chat.images[:shown]), tuple(chat.images[shown:])
    return PromptSplit(prefix, suffix, prefix_images, suffix_images, (prefix, *map(_image_hash, prefix_images)))


def _cuts(common: str, special_tokens: tuple[str, ...]) -> list[int]:
    """Where to try the split, best first: just after the last special token; else at the last line breaks
    or spaces (templates without special tokens, LLaVA-1.5's "USER: ... ASSISTANT: ...")."""
    cuts = [max((common.rfind(token) + len(token) for token in special_tokens if token in common), default=0)]
    spaces = [index for index, char in enumerate(common) if char in " \n"][-3:]
    cuts += [index + step for index in reversed(spaces) for step in (0, 1)]
    return [cut for cut in dict.fromkeys(cuts) if cut > 0]


def _ids(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text, special tokens from the text alone (as ``encode_prompts`` encodes it)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _image_hash(image: Image.Image) -> str:
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def special_token_strings(tokenizer) -> tuple[str, ...]:
    """Every special token's text (the template's turn markers among them), longest first."""
    added = [token.content for token in tokenizer.added_tokens_decoder.values() if token.special]
    return tuple(sorted({*added, *tokenizer.all_special_tokens}, key=len, reverse=True))


@dataclass
class PrefixEntry:
    """A prefix run once: its processor inputs (for positions and checks) and the model's cache."""

    inputs: dict[str, torch.Tensor]  # the processor's batch of one for the prefix
    cache: Any  # the model's Cache after the prefix, batch of one
    nbytes: int
    verified: bool = False  # the whole-prompt id check passed (see the module docstring)
    usable: bool = True  # False: the check failed; this prefix's requests run whole

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


@dataclass
class PrefixStats:
    """Reuse counters, in requests (read them; the engine writes them)."""

    hits: int = 0  # ran on a prefix already cached
    misses: int = 0  # ran its prefix (and cached it)
    refused: int = 0  # split, but its prefix failed the whole-prompt check: ran whole
    evictions: int = 0  # prefixes dropped for the budget
    tokens_reused: int = 0  # prefix tokens not run again, over all hits
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)


class PrefixCache:
    """An LRU of :class:`PrefixEntry` under a byte budget and an entry count; the engine's batch worker's only.

    The count bounds what bytes do not: prefixes that failed their check keep no tensors, only the
    verdict, so an optimizer trying hundreds of programs does not re-check each one.
    """

    def __init__(self, budget_bytes: int, max_entries: int = 256):
        self.budget_bytes = budget_bytes
        self.max_entries = max_entries
        self.stats = PrefixStats()
        self._entries: OrderedDict[tuple, PrefixEntry] = OrderedDict()

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> PrefixEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: tuple, entry: PrefixEntry) -> None:
        """Keep ``entry`` (most recent), evicting the least recent until the budget holds."""
        if entry.nbytes > self.budget_bytes:
            return
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while self.nbytes > self.budget_bytes or len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.stats.add(evictions=1)


def tensor_bytes(value: Any, seen: set[int] | None = None) -> int:
    """Bytes of every tensor reachable from ``value`` (a Cache of any family: layers, conv states ...)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return 0
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item, seen) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item, seen) for item in value)
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return sum(tensor_bytes(item, seen) for item in vars(value).values())
    return 0


__all__ = ["DEFAULT_BUDGET_MB", "PrefixCache", "PrefixEntry", "PrefixStats", "PromptSplit", "special_token_strings",
           "split_prompt", "tensor_bytes"]
