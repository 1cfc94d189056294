"""Seeded sampling per request inside one batched ``generate``: a row's draw never depends on its batch-mates.

transformers samples all rows of a batch with one ``torch.multinomial`` on torch's global RNG.
Seeding that RNG per batch (``torch.manual_seed``) therefore makes a sampled answer depend on
which requests shared its batch (each step's draws are dealt out row by row), and any other thread
drawing from the global RNG meanwhile (a second engine's worker) moves it too. ``generate`` takes
no per-row generator (transformers 5), so the engine decodes greedily and :class:`RowSampler`,
the last logits processor, samples: it applies transformers' own warpers for the generation
config, draws each row's token with that row's ``torch.Generator`` seeded from its request, and
leaves only that token selectable, which greedy decoding then takes.

The warped scores are kept (``scores``) for the log-probs: they are the distribution each token
was drawn from, exactly what ``output.scores`` holds when transformers samples.

Example::

    sampler = RowSampler(sampling_warpers(config, model.device), seeds=[7, 7, 3])
    model.generate(**batch, do_sample=False, logits_processor=LogitsProcessorList([sampler]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)


def sampling_warpers(config: GenerationConfig, device: torch.device) -> LogitsProcessorList:
    """The warpers transformers applies when it samples under ``config``, in its order.

    Mirrors the ``do_sample`` branch of ``GenerationMixin._get_logits_processor`` (transformers
    5), so moving the draw into :class:`RowSampler` changes which RNG draws, not what is drawn from.
    """
    warpers = LogitsProcessorList()
    if config.temperature is not None and config.temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(config.temperature))
    if config.top_k is not None and config.top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=config.top_k))
    if config.top_p is not None and config.top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=config.top_p))
    if config.min_p is not None:
        warpers.append(MinPLogitsWarper(min_p=config.min_p))
    if config.typical_p is not None and config.typical_p < 1.0:
        warpers.append(TypicalLogitsWarper(mass=config.typical_p))
    if config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0:
        warpers.append(EpsilonLogitsWarper(epsilon=config.epsilon_cutoff))
    if config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0:
        warpers.append(EtaLogitsWarper(epsilon=config.eta_cutoff, device=device))
    return warpers


class RowSampler(LogitsProcessor):
    """Draws row ``i``'s next token with a generator seeded ``seeds[i]``; see the module docstring.

    Build a new one per ``generate`` call (the generators hold each row's position in its stream).
    ``keep_scores`` keeps every step's warped scores in ``scores`` (for log-probs).
    """

    def __init__(self, warpers: LogitsProcessorList, seeds: Sequence[int], *, keep_scores: bool = False):
        self.warpers = warpers
        self.seeds = list(seeds)
        self.keep_scores = keep_scores
        self.scores: list[torch.Tensor] = []
        self._generators: list[torch.Generator] | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        warped = self.warpers(input_ids, scores)
        if self.keep_scores:
            self.scores.append(warped)
        if self._generators is None:  # on the device the scores live on: CUDA draws need a CUDA generator
            self._generators = [torch.Generator(device=scores.device).manual_seed(seed) for seed in self.seeds]
        probabilities = warped.softmax(dim=-1)
        drawn = torch.stack([torch.multinomial(probabilities[row], 1, generator=generator)[0]
                             for row, generator in enumerate(self._generators)])
        only_drawn = torch.full_like(scores, float("-inf"))
        return only_drawn.scatter_(1, drawn[:, None], 0.0)


__all__ = ["RowSampler", "sampling_warpers"]
