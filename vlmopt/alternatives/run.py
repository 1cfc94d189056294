"""``run_baselines``: CLIP / SigLIP zero-shot and a linear probe on the task's own seeded splits.

The question a user asks before shipping a prompt-optimized VLM — would a classic image classifier
do as well for a fraction of the cost? — is answered under the VLM runs' protocol: the same
``load_splits`` (same seed, same stratified split, same fingerprint; never a split of its own),
test scored once, val used only as the VLM's search uses it. One run directory holds a sub-run
per method, each a finished run (``predictions.jsonl``, ``metrics.json``, ``confusion.png``,
``report.html``) that ``vlmopt report`` reads like any other::

    runs/<name>-baseline-<timestamp>/
      config.yaml  baseline.json  failures.jsonl (unreadable images)
      zero_shot/     test rows; val_metrics.json; baseline.json (templates)
      linear_probe/  test rows; baseline.json (C and how it was chosen)

Besides the standard metrics, each ``metrics.json`` carries what the comparison table reads:
``method`` (``zero-shot`` / ``linear-probe``), ``model``, ``parameters`` (what inference runs: the
image tower plus the head), ``model_size_bytes``, ``latency_ms_per_image`` (test: preprocessing,
forward pass and head, per image of a batch), ``model_calls`` (inputs encoded: images and class
prompts), ``train_s`` (building the head: encoding prompts, or fitting) and ``wall_s`` (everything
this method's result took: loading the model, encoding what it needs, fitting, scoring).

Example::

    outcome = run_baselines(cfg, BaselineSettings(model="openai/clip-vit-base-patch32", probe=True))
    outcome.methods["linear-probe"].metrics["accuracy"]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from vlmopt.alternatives.embeddings import embed_split
from vlmopt.alternatives.encoder import ContrastiveEncoder
from vlmopt.alternatives.records import probability_records, split_metrics, write_method_run
from vlmopt.alternatives.zero_shot import DEFAULT_TEMPLATES, check_templates, class_embeddings, label_probabilities
from vlmopt.config import ConfigError, ModelConfig, TaskConfig
from vlmopt.datasets import LoadedSplits, load_splits
from vlmopt.reports.run_dir import RunDir
from vlmopt.serving.model_path import check_model_path

ZERO_SHOT, LINEAR_PROBE = "zero-shot", "linear-probe"
HEAD_BYTES = 4  # class embeddings and probe weights are float32


@dataclass(frozen=True)
class BaselineSettings:
    """What ``vlmopt baseline`` runs (its options, one field each)."""

    model: str
    revision: str | None = None
    zero_shot: bool = True
    probe: bool = False
    train_and_val: bool = False
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    C: float | None = None
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"


@dataclass
class MethodOutcome:
    run: RunDir
    metrics: dict[str, Any]
    val_metrics: dict[str, Any] | None = None


@dataclass
class BaselineOutcome:
    run: RunDir
    methods: dict[str, MethodOutcome] = field(default_factory=dict)


class _Embeddings:
    """Each split's image embeddings, computed (or read from the cache) the first time a method needs them."""

    def __init__(
        self,
        encoder: ContrastiveEncoder,
        splits: LoadedSplits,
        cfg: TaskConfig,
        batch_size: int,
        console: Console | None,
    ):
        self._encoder, self._splits, self._cfg, self._batch, self._console = encoder, splits, cfg, batch_size, console
        self._done: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._done:
            self._done[split] = embed_split(
                self._encoder,
                split,
                getattr(self._splits, split),
                cache_dir=self._cfg.run.cache_dir,
                max_side=self._cfg.dataset.max_image_side,
                batch_size=self._batch,
                console=self._console,
            )
        return self._done[split]

    def seconds(self, *names: str) -> float:
        return float(sum(self(name)[1].sum() for name in names))


def _check(cfg: TaskConfig, settings: BaselineSettings) -> None:
    if cfg.task.output != "single_label":
        raise ConfigError(f"the CLIP baselines classify single-label tasks; this task's output is {cfg.task.output!r}")
    if not (settings.zero_shot or settings.probe):
        raise ConfigError("nothing to run: keep the zero-shot baseline or add --probe")
    check_templates(settings.templates)
    check_model_path(settings.model)  # a wrong path fails before the dataset loads


def run_baselines(cfg: TaskConfig, settings: BaselineSettings, *, console: Console | None = None) -> BaselineOutcome:
    """Run the asked-for methods on ``cfg``'s splits; write the run directory (module docstring)."""
    _check(cfg, settings)
    run = RunDir.create(cfg.run.output_dir, f"{cfg.name or 'run'}-baseline")
    run.write_config(cfg)
    splits = load_splits(cfg)
    for skip in splits.skipped:
        run.append_failure(skip.id, "image", f"{skip.reason}: {skip.message}")
    started = time.perf_counter()
    encoder = ContrastiveEncoder.load(
        settings.model, revision=settings.revision, device=settings.device, dtype=settings.dtype
    )
    load_s = time.perf_counter() - started
    method_cfg = cfg.model_copy(
        update={"model": ModelConfig(id=settings.model, revision=settings.revision, device=settings.device)}
    )
    embeddings = _Embeddings(encoder, splits, cfg, settings.batch_size, console)
    counts = encoder.parameter_counts()
    common = {
        "model": settings.model,
        "model_fingerprint": encoder.source.fingerprint,
        "family": encoder.family,
        "device": str(encoder.device),
        "batch_size": settings.batch_size,
        "checkpoint_parameters": counts["total"],
    }
    outcome = BaselineOutcome(run)
    if settings.zero_shot:
        outcome.methods[ZERO_SHOT] = _zero_shot(
            run, method_cfg, splits, encoder, embeddings, settings, {**common, "load_s": load_s}
        )
    if settings.probe:
        outcome.methods[LINEAR_PROBE] = _linear_probe(
            run, method_cfg, splits, encoder, embeddings, settings, {**common, "load_s": load_s}
        )
    run.write_json(
        "baseline.json",
        {
            "settings": asdict(settings),
            **common,
            "load_s": load_s,
            "methods": {name: m.run.path.name for name, m in outcome.methods.items()},
        },
    )
    return outcome


def _cost(encoder: ContrastiveEncoder, head_parameters: int, test_seconds: np.ndarray, head_s: float) -> dict:
    vision = encoder.parameter_counts()["vision"]
    return {
        "parameters": vision + head_parameters,
        "parameters_detail": {"image_tower": vision, "head": head_parameters},
        "model_size_bytes": vision * encoder.bytes_per_parameter() + head_parameters * HEAD_BYTES,
        "latency_ms_per_image": 1000 * (float(test_seconds.sum()) + head_s) / len(test_seconds),
    }


def _zero_shot(run, cfg, splits, encoder, embeddings, settings, common) -> MethodOutcome:
    started = time.perf_counter()
    classes = class_embeddings(encoder, splits.labels, settings.templates)
    text_s = time.perf_counter() - started
    scale, bias = encoder.logit_scale, encoder.logit_bias
    val_x, val_s = embeddings("val")
    val_records = probability_records(
        splits.val, label_probabilities(val_x, classes, scale=scale, bias=bias), splits.labels, val_s
    )
    test_x, test_s = embeddings("test")
    started = time.perf_counter()
    probs = label_probabilities(test_x, classes, scale=scale, bias=bias)
    head_s = time.perf_counter() - started
    records = probability_records(splits.test, probs, splits.labels, test_s + head_s / len(test_s))
    val_metrics = split_metrics(val_records, "val", splits, cfg.seed)
    extra = {
        "method": ZERO_SHOT,
        **common,
        **_cost(encoder, classes.size, test_s, head_s),
        "model_calls": len(splits.labels) * len(settings.templates) + len(splits.val) + len(splits.test),
        "train_s": text_s,
        "wall_s": common["load_s"] + text_s + embeddings.seconds("val", "test") + head_s,
        "val_accuracy": val_metrics["accuracy"],
    }
    details = {
        "templates": list(settings.templates),
        "logit_scale": scale,
        "logit_bias": bias,
        "probabilities": "softmax of exp(logit_scale) * cos + logit_bias over the classes",
    }
    method_run, metrics = write_method_run(
        run,
        "zero_shot",
        cfg,
        records,
        splits=splits,
        extra=extra,
        files={"val_metrics.json": val_metrics, "baseline.json": details},
    )
    return MethodOutcome(method_run, metrics, val_metrics)


def _linear_probe(run, cfg, splits, encoder, embeddings, settings, common) -> MethodOutcome:
    from vlmopt.alternatives.linear_probe import fit_probe

    train_x, _ = embeddings("train")
    uses_val = settings.train_and_val or settings.C is None  # to train on, or to choose C
    val = (embeddings("val")[0], [ex.label for ex in splits.val]) if uses_val else None
    fit = fit_probe(
        train_x,
        [ex.label for ex in splits.train],
        splits.labels,
        val=val,
        train_and_val=settings.train_and_val,
        C=settings.C,
        seed=cfg.seed,
    )
    embedded = ("train", "val", "test") if uses_val else ("train", "test")
    test_x, test_s = embeddings("test")
    started = time.perf_counter()
    probs = fit.probabilities(test_x)
    head_s = time.perf_counter() - started
    records = probability_records(splits.test, probs, splits.labels, test_s + head_s / len(test_s))
    extra = {
        "method": LINEAR_PROBE,
        **common,
        **_cost(encoder, fit.parameters, test_s, head_s),
        "model_calls": sum(len(getattr(splits, name)) for name in embedded),
        "train_s": fit.fit_s,
        "wall_s": common["load_s"] + embeddings.seconds(*embedded) + fit.fit_s + head_s,
        "probe": fit.summary(),
    }
    method_run, metrics = write_method_run(
        run, "linear_probe", cfg, records, splits=splits, extra=extra, files={"baseline.json": fit.summary()}
    )
    return MethodOutcome(method_run, metrics)
