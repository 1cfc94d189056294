"""The outer search space: the program choices the search method itself does not search.

A method (MIPROv2, GEPA, SIMBA, random search) searches instructions and demos for one fixed
program. Whether that program should think aloud, how it is framed, whether decoding is
constrained, how many demos it may carry, how large the images are (the main driver of prompt
tokens and latency for a VLM), how much search budget MIPROv2 gets — and which method searches
(``optimizer.search_methods``) — are choices *around* it; an outer Optuna study picks them.

Every dimension is a finite categorical (a grid), so a trial's settings are plain JSON values,
duplicates are exact comparisons and the grid's size bounds how many distinct trials exist. The
defaults come from the config (the config's value is always one of the choices); pin a dimension
by giving it one choice. With ``optimizer.calibrate`` the space keeps what ReAnchor's measured
label probabilities need: reasoning off, structured generation on.

Example::

    space = SearchSpace.from_config(cfg)
    settings = space.suggest(trial)           # {"adapter": "compact", "reasoning": False, ...}
    trial_cfg = apply_settings(cfg, settings)  # a validated TaskConfig for that trial
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import optuna

from vlmopt.config import TaskConfig

# DSPy's "light" preset proposes this many candidates; it stands in when the config sets none.
DEFAULT_NUM_CANDIDATES = 6


@dataclass(frozen=True)
class SearchSpace:
    """Choices per dimension; the field names are the Optuna parameter names."""

    method: tuple[str, ...] = ("mipro",)
    adapter: tuple[str, ...] = ("compact", "dspy")
    reasoning: tuple[bool, ...] = (False, True)
    structured_generation: tuple[bool, ...] = (True, False)
    max_labeled_demos: tuple[int, ...] = (0, 1, 2)
    max_bootstrapped_demos: tuple[int, ...] = (0, 1, 2)
    max_image_side: tuple[int, ...] = (384, 768)
    num_candidates: tuple[int, ...] = (3, 6)
    num_trials: tuple[int, ...] = (3, 6)

    def __post_init__(self) -> None:
        for f in fields(self):
            choices = getattr(self, f.name)
            if not choices or len(set(choices)) != len(choices):
                raise ValueError(f"search space '{f.name}' needs distinct choices, got {choices!r}")

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> SearchSpace:
        """Around the config: its framing both ways, 0..its demo limits, its image side and half of it,
        its MIPROv2 budget and half of it."""
        opt = cfg.optimizer
        side = cfg.dataset.max_image_side
        candidates = opt.num_candidates or DEFAULT_NUM_CANDIDATES
        trials = opt.num_trials or max(2, candidates)
        measured = opt.calibrate  # the config validator already holds these at False / True
        return cls(
            method=_config_first(opt.method, tuple(opt.search_methods)),
            adapter=_config_first(cfg.task.adapter, ("compact", "dspy")),
            reasoning=(False,) if measured else _config_first(cfg.task.reasoning, (False, True)),
            structured_generation=(True,) if measured else _config_first(cfg.task.structured_generation,
                                                                         (True, False)),
            max_labeled_demos=tuple(range(opt.max_labeled_demos + 1)),
            max_bootstrapped_demos=tuple(range(opt.max_bootstrapped_demos + 1)),
            max_image_side=_ascending(max(16, side // 2), side),
            num_candidates=_ascending(max(2, candidates // 2), candidates),
            num_trials=_ascending(max(2, trials // 2), trials),
        )

    @property
    def size(self) -> int:
        """How many distinct settings the grid holds."""
        return math.prod(len(getattr(self, f.name)) for f in fields(self))

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """One categorical suggestion per dimension (a retried trial gets its fixed values back)."""
        return {f.name: trial.suggest_categorical(f.name, list(getattr(self, f.name))) for f in fields(self)}

    def to_json(self) -> dict[str, list[Any]]:
        return {name: list(choices) for name, choices in asdict(self).items()}


def _config_first(value: Any, both: tuple[Any, ...]) -> tuple[Any, ...]:
    return (value, *(v for v in both if v != value))


def _ascending(*values: int) -> tuple[int, ...]:
    return tuple(sorted(set(values)))


def apply_settings(cfg: TaskConfig, settings: dict[str, Any]) -> TaskConfig:
    """The config one trial runs: the settings written into their sections, validated as a whole.

    The MIPROv2 budget becomes explicit (``auto`` off), since DSPy refuses ``auto`` together with
    ``num_candidates``.
    """
    raw = cfg.model_dump()
    for key in ("adapter", "reasoning", "structured_generation"):
        raw["task"][key] = settings[key]
    raw["dataset"]["max_image_side"] = settings["max_image_side"]
    raw["optimizer"].update(
        method=settings.get("method", raw["optimizer"]["method"]),
        auto=None,
        num_candidates=settings["num_candidates"],
        num_trials=settings["num_trials"],
        max_labeled_demos=settings["max_labeled_demos"],
        max_bootstrapped_demos=settings["max_bootstrapped_demos"],
    )
    return TaskConfig.model_validate(raw)
