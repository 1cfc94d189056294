"""Running prompts on cached prefixes: the model side of shared-prefix reuse (see ``prefix_cache``).

:class:`PrefixPlanner` decides, per batch of the engine's worker, which requests run on a cached
prefix (building it on a miss, checking it once against the whole prompt) and groups them into
unpadded batches; :func:`run_prefix` runs a prefix once; :func:`prefill_on_prefix` runs suffixes
on copies of its cache, with positions as one unsplit forward numbers them. Label scoring
(``label_scoring.score_on_cache``) and ``generate`` continue from what it returns.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from vlmopt.serving.chat_inputs import encode_prompts
from vlmopt.serving.families import ModelFamily, scoring_inputs
from vlmopt.serving.prefix_cache import PrefixCache, PrefixEntry, PromptSplit, tensor_bytes


class PrefixJob(Protocol):
    """What the planner reads of an engine's request."""

    prompt: str
    images: list[Image.Image]
    split: PromptSplit | None


Run = tuple[PrefixEntry, list[int], dict[str, torch.Tensor]]
"""A prefix, the indices of the jobs that run on it together, and their stacked suffix inputs."""


class PrefixPlanner:
    """Plans a worker batch's jobs onto cached prefixes; its cache is the batch worker's only."""

    def __init__(self, model, processor, family: ModelFamily, cache: PrefixCache, *, device,
                 tokenizer_lock: threading.Lock):
        self.model, self.processor, self.family, self.cache = model, processor, family, cache
        self.device = device
        self._tokenizer_lock = tokenizer_lock  # the engine's: every processor encode takes it

    def plan(self, jobs: Sequence[PrefixJob],
             chunks: Callable[[list[int]], list[list[int]]]) -> tuple[list[int], list[Run]]:
        """Which jobs run whole (indices), and which run on a cached prefix, in unpadded ``chunks``.

        Jobs on one prefix whose suffixes have equal shapes form one batch (see ``prefix_cache``); a
        prefix that fails its whole-prompt check sends its jobs to the whole path.
        """
        whole = [index for index, job in enumerate(jobs) if job.split is None]
        by_prefix: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            if job.split is not None:
                by_prefix.setdefault(job.split.key, []).append(index)
        runs: list[Run] = []
        for key, indices in by_prefix.items():
            entry = self.cache.get(key)
            built = entry is None
            if built:
                entry = run_prefix(self.model, self.processor, self.family, jobs[indices[0]].split,
                                   device=self.device, dtype=self.model.dtype)
                self.cache.put(key, entry)
            first = self._encode_suffix(jobs[indices[0]].split) if entry.usable else None
            if not entry.verified:
                self._verify(entry, jobs[indices[0]], first)
            if not entry.usable:
                self.cache.stats.add(refused=len(indices))
                whole += indices
                continue
            self.cache.stats.add(misses=int(built), hits=len(indices) - built,
                                 tokens_reused=entry.length * (len(indices) - built))
            suffixes = dict(zip(indices, [first, *(self._encode_suffix(jobs[i].split) for i in indices[1:])],
                                strict=True))
            shapes: dict[tuple, list[int]] = {}
            for index, suffix in suffixes.items():
                shapes.setdefault(tuple((name, tuple(value.shape[1:])) for name, value in suffix.items()),
                                  []).append(index)
            for same_shape in shapes.values():
                for chunk in chunks(same_shape):
                    batch = {name: torch.cat([suffixes[index][name] for index in chunk]) for name in suffixes[chunk[0]]}
                    runs.append((entry, chunk, batch))
        return sorted(whole), runs

    def _encode_suffix(self, split: PromptSplit) -> dict[str, torch.Tensor]:
        with self._tokenizer_lock:
            batch = encode_prompts(self.processor, [split.suffix], [list(split.suffix_images)])
        return {name: value.to(self.device) for name, value in batch.items()}

    def _verify(self, entry: PrefixEntry, job: PrefixJob, suffix: dict[str, torch.Tensor]) -> None:
        """Once per prefix: prefix + suffix ids must be the whole prompt's, else the prefix is not used."""
        with self._tokenizer_lock:
            ids = encode_prompts(self.processor, [job.prompt], [job.images])["input_ids"][0].tolist()
        entry.verified = True
        if ids != entry.inputs["input_ids"][0].tolist() + suffix["input_ids"][0].tolist():
            entry.usable, entry.cache, entry.inputs, entry.nbytes = False, None, {}, 0


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


__all__ = ["PrefixPlanner", "Prefilled", "prefill_on_prefix", "run_prefix"]
