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

**Running on a prefix** (:func:`prefill_on_prefix`). Queries that share a prefix and whose suffixes
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

import copy
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from vlmopt.serving.chat_inputs import ChatInput, encode_prompts
from vlmopt.serving.families import ModelFamily, scoring_inputs

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


@torch.inference_mode()
def run_prefix(model, processor, family: ModelFamily, split: PromptSplit, *, device, dtype) -> PrefixEntry:
    """The prefix through the model once (images and all), its cache kept."""
    inputs = dict(encode_prompts(processor, [split.prefix], [list(split.prefix_images)]))
    inputs = {key: value.to(device) for key, value in inputs.items()}
    model_inputs = _model_inputs(family, inputs, dtype)
    if family.positions == "mrope":  # explicit: the model would add the rope deltas an earlier batch left
        positions, _ = _mrope_positions(model, family, inputs) or _text_positions(inputs, 1)
        model_inputs["position_ids"] = positions
    output = model(**model_inputs, use_cache=True, logits_to_keep=1)
    kept = {key: value for key, value in inputs.items() if key in (*_PER_TOKEN, "image_grid_thw")}  # not pixels
    return PrefixEntry(inputs=kept, cache=output.cache, nbytes=tensor_bytes(output.cache) + tensor_bytes(kept))


@dataclass
class Prefilled:
    """Prompts run on a shared prefix: what label scoring and generation continue from."""

    last_logits: torch.Tensor  # [rows, vocab]: predicts each row's first answer token
    cache: Any  # rows' caches, prefix + suffix
    input_ids: torch.Tensor  # [rows, prefix + suffix]: the whole prompts' ids
    rope_deltas: torch.Tensor | None  # M-RoPE families: per-row offset of text positions (also left on the model)


@torch.inference_mode()
def prefill_on_prefix(model, family: ModelFamily, entry: PrefixEntry, suffix: dict[str, torch.Tensor], *,
                      dtype, keep_last: bool = False) -> Prefilled:
    """Run unpadded ``suffix`` rows (the processor's batch) on copies of ``entry``'s cache.

    ``keep_last=True`` leaves each row's last suffix token out of the cache, for ``generate``: it
    starts from a cache plus at least one new token, and the prompt's last token is never an image's.
    """
    rows = int(suffix["input_ids"].shape[0])
    cache = copy.deepcopy(entry.cache)
    if rows > 1:
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long, device=suffix["input_ids"].device))
    input_ids = torch.cat([entry.inputs["input_ids"].expand(rows, -1), suffix["input_ids"]], dim=1)
    run = dict(suffix)
    if keep_last:
        run = {key: (value[:, :-1] if key in _PER_TOKEN and value.dim() == 2 else value) for key, value in run.items()}
    model_inputs = _model_inputs(family, run, dtype)
    width = entry.length + int(run["input_ids"].shape[1])
    model_inputs["attention_mask"] = torch.ones((rows, width), dtype=torch.long, device=input_ids.device)
    if "token_type_ids" in model_inputs:  # Gemma 3 builds its image blocks by position: over cache + new tokens
        prefix_types = _per_token(entry.inputs, "token_type_ids").expand(rows, -1)
        model_inputs["token_type_ids"] = torch.cat([prefix_types, model_inputs["token_type_ids"]], dim=1)
    deltas = None
    if family.positions == "mrope":
        whole = _whole_prompt_inputs(entry.inputs, suffix, rows)
        positions, deltas = _mrope_positions(model, family, whole) or _text_positions(whole, rows)
        model_inputs["position_ids"] = positions[..., entry.length:width]
        getattr(model, "model", model).rope_deltas = deltas
    output = model(**model_inputs, cache=cache, use_cache=True, logits_to_keep=1)
    return Prefilled(output.logits[:, -1, :], output.cache, input_ids, deltas)


_PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
"""Processor outputs with one entry per token (cut with the tokens); the rest describe images."""


def _model_inputs(family: ModelFamily, inputs: dict[str, torch.Tensor], dtype) -> dict[str, torch.Tensor]:
    """What a forward takes from the processor's batch: floating tensors (pixels) in the model's dtype."""
    kept = scoring_inputs(family, inputs)
    return {key: value.to(dtype) if value.is_floating_point() else value for key, value in kept.items()}


def _whole_prompt_inputs(prefix: dict[str, torch.Tensor], suffix: dict[str, torch.Tensor],
                         rows: int) -> dict[str, torch.Tensor]:
    """The id-level inputs of the unsplit prompts, rows x (prefix + suffix), for M-RoPE positions."""
    whole = {key: torch.cat([_per_token(prefix, key).expand(rows, -1), _per_token(suffix, key)], dim=1)
             for key in ("input_ids", "mm_token_type_ids") if key in prefix or key in suffix}
    whole["attention_mask"] = torch.ones_like(whole["input_ids"])
    grids = []
    suffix_grids = list(_grids_per_row(suffix))
    for row in range(rows):  # get_rope_index takes each row's images in order: the prefix's, then its own
        if prefix.get("image_grid_thw") is not None:
            grids.append(prefix["image_grid_thw"])
        grids.extend(suffix_grids[row])
    if grids:
        whole["image_grid_thw"] = torch.cat(grids)
    return whole


def _per_token(inputs: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """A per-token input, zeros where the part has none (the tokenizer encodes a text-only part: no token types)."""
    return inputs[key] if key in inputs else torch.zeros_like(inputs["input_ids"])


def _grids_per_row(inputs: dict[str, torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    """Each row's ``image_grid_thw`` entries, split by how many images each row's tokens hold."""
    grids = inputs.get("image_grid_thw")
    types = inputs.get("mm_token_type_ids")
    rows = int(inputs["input_ids"].shape[0])
    if grids is None or types is None:
        yield from ([] for _ in range(rows))
        return
    starts = (types == 1) & ~torch.nn.functional.pad(types == 1, (1, 0))[:, :-1]
    counts = starts.sum(dim=1).tolist()
    offset = 0
    for count in counts:
        yield [grids[offset:offset + count]] if count else []
        offset += count


def _mrope_positions(model, family: ModelFamily, inputs: dict[str, torch.Tensor]):
    """(positions [3, rows, width], rope_deltas [rows, 1]) of prompts with images; None without images."""
    if family.positions != "mrope" or inputs.get("image_grid_thw") is None:
        return None
    language = getattr(model, "model", model)
    return language.get_rope_index(inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
                                   image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])


def _text_positions(inputs: dict[str, torch.Tensor], rows: int):
    """Positions 0 .. width-1 on all three M-RoPE axes, and zero deltas: a prompt with no image."""
    width = int(inputs["input_ids"].shape[1])
    device = inputs["input_ids"].device
    positions = torch.arange(width, device=device).view(1, 1, -1).expand(3, rows, -1)
    return positions, torch.zeros((rows, 1), dtype=torch.long, device=device)


__all__ = ["DEFAULT_BUDGET_MB", "PrefixCache", "PrefixEntry", "Prefilled", "PromptSplit", "prefill_on_prefix",
           "run_prefix", "special_token_strings", "split_prompt", "tensor_bytes"]
