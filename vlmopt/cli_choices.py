"""The CLI's options with a fixed set of choices, as enums: ``--help`` lists them, typer refuses others.

Each mirrors a set the library defines (named in its docstring); tests/test_cli_fuzz.py checks
they stay equal, so a choice added to the library shows up here or fails a test.
"""

from __future__ import annotations

from enum import StrEnum


class Split(StrEnum):
    """The split ``evaluate`` scores (``pipeline.SplitName``)."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


class Backend(StrEnum):
    """``backend.kind``: in-process transformers, or an OpenAI-compatible server (vLLM)."""

    transformers = "transformers"
    openai = "openai"


class ExportFormat(StrEnum):
    """What ``export`` writes (``export.FORMATS``)."""

    openai_request = "openai-request"
    prompt_json = "prompt-json"


class Objective(StrEnum):
    """An outer-search objective (``optimizer.search_objectives``)."""

    accuracy = "accuracy"
    tokens = "tokens"
    latency = "latency"


class AbstainConfidence(StrEnum):
    """The confidence an abstention threshold is on (``optimizer.abstain.confidence``)."""

    auto = "auto"
    max_prob = "max_prob"
    margin = "margin"


class Method(StrEnum):
    """A search method (``optimizer.method``, ``config.SEARCH_METHODS``)."""

    mipro = "mipro"
    gepa = "gepa"
    simba = "simba"
    random_search = "random_search"
