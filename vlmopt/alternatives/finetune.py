"""``vlmopt finetune``: LoRA fine-tuning of the VLM on the train split, under the held-out protocol.

The weights-side answer to "how much more than prompting?": the same program (the config's
baseline prompt, or an optimized artifact's instruction and demos) answers every training image,
and a LoRA adapter (``peft``) on the language model's linear layers learns to write the answer the
program expects. Training is TRL's ``SFTTrainer`` on prompt-completion rows (``finetune_data``):
its vision collator runs the processor on our rendered prompts and tokenizes the completion on its
own with the prompt masked, which is exactly the engine's prompt plus the label scorer's answer.

* **Protocol**: train on train, early-stop on the val loss, report on test; ``train_and_val``
  trains on both for the final model (a fixed number of epochs, no early stopping).
* **Resumable**: checkpoints (adapter, optimizer, scheduler, RNG) go to a folder named by the
  training's inputs (``finetune_checkpoints``); rerunning the same command after a kill resumes
  from the last complete one.
* **Output**: the run directory holds ``adapter/`` (``save_pretrained``: safetensors),
  ``artifact.json`` (format 3: the program plus the adapter's sha256 and base-model fingerprint),
  the test predictions, ``training.json`` (the trainer's state) and ``metrics.json`` with the
  standard metrics and the cost fields the comparison reads (``method``/``kind``: ``finetune``,
  ``model_calls``: the evaluation's, ``wall_s``: training included, ``parameters``: the merged
  model's, with ``parameters_detail.trainable``, ``latency_ms_per_image``).

Example::

    outcome = finetune_task(load_config("task.yaml"), settings=FinetuneSettings(epochs=5, lr=1e-3))
    outcome.metrics["accuracy"], outcome.artifact      # then: evaluate_task(cfg, artifact=outcome.artifact)
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from vlmopt.alternatives.finetune_checkpoints import checkpoint_root, last_complete_checkpoint, training_key
from vlmopt.artifacts import ADAPTER_CONFIG, ADAPTER_WEIGHTS, file_sha256, load_artifact, render_prompt, save_artifact
from vlmopt.config import BackendConfig, ConfigError, TaskConfig
from vlmopt.datasets import LoadedSplits, load_splits
from vlmopt.errors import VlmoptError
from vlmopt.evaluate import EvalOutcome, SplitInfo, evaluate_program
from vlmopt.pipeline import configure_cache, finish_run, provenance
from vlmopt.programs import Classify, create_program
from vlmopt.reports.run_dir import RunDir
from vlmopt.serving.factory import closes_the_lms_it_creates, create_lm, job_owned, model_calls

TEXT_LINEAR_LAYERS = (
    r".*(language_model|text_model)\.(model\.)?layers\.\d+\..*"
    r"(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)
"""LoRA targets: the language model's attention and MLP projections (what vLLM's LoRA serves), not the vision tower."""


class FinetuneError(VlmoptError, RuntimeError):
    """Fine-tuning cannot run: a missing extra, a task it does not train, target modules that match nothing."""


@dataclass(frozen=True)
class FinetuneSettings:
    """Training settings (the CLI's options); all of them name the checkpoint folder."""

    epochs: float = 3.0
    max_steps: int | None = None  # overrides epochs when set
    lr: float = 2e-4
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    batch_size: int = 4
    grad_accum: int = 1
    save_steps: int | None = None  # checkpoint (and val) every N steps; default once per epoch
    patience: int = 2  # val evaluations without a better val loss before stopping
    target_modules: str = TEXT_LINEAR_LAYERS
    train_and_val: bool = False


@dataclass
class FinetuneOutcome:
    run: RunDir
    artifact: Path
    adapter_dir: Path
    metrics: dict[str, Any]  # what metrics.json holds: the test metrics and the cost fields
    test: EvalOutcome
    val: EvalOutcome | None
    training: dict[str, Any]  # what training.json holds
    notes: list[str] = field(default_factory=list)


def check_finetunable(cfg: TaskConfig) -> None:
    """Refuse, before any work, a task whose answer is not one label (what the rows and the scorer know)."""
    if cfg.task.output != "single_label" or cfg.task.reasoning:
        raise ConfigError(
            "vlmopt finetune trains single-label classifiers without reasoning: set "
            "task.output: single_label and task.reasoning: false"
        )


def _program(cfg: TaskConfig, prompt: str | Path, labels: list[str]) -> tuple[Classify, TaskConfig, list[str]]:
    """The program to train under: the config's baseline prompt, or an artifact's (instruction, demos)."""
    if str(prompt) == "baseline":
        return create_program(cfg.task, labels), cfg, []
    frozen = load_artifact(prompt, expected_labels=labels)
    if frozen.adapter_dir is not None:
        raise ConfigError(
            f"{prompt}: this artifact is already fine-tuned; pass the prompt artifact vlmopt optimize "
            "wrote (or 'baseline')"
        )
    notes = []
    if frozen.program.label_weights:
        frozen.program.label_weights = None
        notes.append(
            "the prompt artifact's calibrated decision was fitted to the base weights; the fine-tuned "
            "program decides by argmax"
        )
    return frozen.program, cfg.model_copy(update={"task": frozen.task}), notes


@closes_the_lms_it_creates
def finetune_task(
    cfg: TaskConfig,
    *,
    prompt: str | Path = "baseline",
    settings: FinetuneSettings = FinetuneSettings(),
    console: Console | None = None,
) -> FinetuneOutcome:
    """Train a LoRA adapter under the program's prompt, evaluate it in-process, write run directory and artifact."""
    check_finetunable(cfg)
    started = time.monotonic()
    run = RunDir.create(cfg.run.output_dir, f"{cfg.name or 'run'}-finetune")
    run.write_config(cfg)
    configure_cache(cfg)
    splits = load_splits(cfg)
    for skip in splits.skipped:
        run.append_failure(skip.id, "image", f"{skip.reason}: {skip.message}")
    program, cfg, notes = _program(cfg, prompt, splits.labels)
    check_finetunable(cfg)  # the prompt artifact's task, when one is given
    adapter_dir, training = _train(cfg, program, splits, settings, run, console)
    run.write_json("training.json", training)

    # evaluated in-process on the merged adapter, whatever backend the config names
    cfg = cfg.model_copy(update={"backend": cfg.backend if cfg.backend.kind == "transformers" else BackendConfig()})
    tuned = cfg.model.model_copy(update={"adapter": str(adapter_dir)})
    lm = job_owned(create_lm(cfg.model_copy(update={"model": tuned})))
    calls_before = model_calls(lm)
    common = dict(
        lm=lm, task=cfg.task, labels=splits.labels, num_threads=cfg.run.num_threads, seed=cfg.seed, console=console
    )
    val = (
        None
        if settings.train_and_val
        else evaluate_program(
            program, splits.val, description="finetuned val", split=SplitInfo.of("val", splits), **common
        )
    )
    test = evaluate_program(
        program, splits.test, run=run, description="finetuned test", split=SplitInfo.of("test", splits), **common
    )
    calls = model_calls(lm)
    metrics = {
        **test.metrics,
        "method": "finetune",  # what reports/run_comparison.py reads (``kind`` too)
        "kind": "finetune",
        "model": cfg.model.id,
        "model_calls": None if calls is None or calls_before is None else calls - calls_before,
        "wall_s": round(time.monotonic() - started, 1),
        "parameters": training["parameters"]["total"],  # what inference runs: the merged model
        "parameters_detail": training["parameters"],  # trainable (the adapter) and total
        "latency_ms_per_image": _latency_ms(test),
        "training": {k: training[k] for k in ("global_step", "epoch", "train_loss", "best_val_loss", "train_and_val")},
        "prompt": str(prompt),
    }
    artifact = save_artifact(
        program,
        cfg,
        splits.labels,
        run.path / "artifact.json",
        metrics={
            "test": _summary(test),
            "val": _summary(val) if val else None,
            "split_sizes": splits.sizes(),
            "finetune": metrics["training"],
        },
        provenance={**provenance(cfg, splits.fingerprint), "finetune": asdict(settings), "prompt": str(prompt)},
        adapter=adapter_section(
            adapter_dir, run.path, f"{cfg.name or 'vlmopt'}-lora", training["base_fingerprint"], settings.rank
        ),
    )
    finish_run(run, metrics)
    return FinetuneOutcome(run, artifact, adapter_dir, metrics, test, val, training, notes)


def _latency_ms(outcome: EvalOutcome) -> float | None:
    mean = (outcome.metrics.get("latency") or {}).get("mean_s")
    return None if mean is None else round(mean * 1000, 3)


def _summary(outcome: EvalOutcome) -> dict[str, Any]:
    keys = ("n", "n_valid", "n_invalid", "accuracy", "accuracy_ci", "macro_f1")
    return {k: outcome.metrics[k] for k in keys if k in outcome.metrics}


def adapter_section(adapter_dir: Path, artifact_dir: Path, name: str, base_fingerprint: str, rank: int) -> dict:
    """The artifact's ``adapter`` section: where the adapter is (relative to the artifact) and its files' hashes."""
    return {
        "kind": "lora",
        "path": str(adapter_dir.relative_to(artifact_dir)),
        "name": name,
        "sha256": file_sha256(adapter_dir / ADAPTER_WEIGHTS),
        "config_sha256": file_sha256(adapter_dir / ADAPTER_CONFIG),
        "base_fingerprint": base_fingerprint,
        "rank": rank,
    }


def _train(
    cfg: TaskConfig,
    program: Classify,
    splits: LoadedSplits,
    settings: FinetuneSettings,
    run: RunDir,
    console: Console | None,
) -> tuple[Path, dict[str, Any]]:
    """Train (or resume) the adapter; save it to ``run/adapter``; return it with the training's facts."""
    try:
        import torch
        from peft import LoraConfig
        from transformers import EarlyStoppingCallback, PrinterCallback, set_seed
        from trl import SFTConfig, SFTTrainer
    except ImportError as exc:
        raise FinetuneError(
            f"vlmopt finetune needs peft and trl ({exc.name} is missing): pip install 'vlmopt[finetune]'"
        ) from None
    from vlmopt.alternatives.finetune_data import sft_dataset, sft_rows
    from vlmopt.alternatives.finetune_progress import RichProgressCallback
    from vlmopt.serving.model_loading import load_model, locate_model

    source = locate_model(cfg.model.id, cfg.model.revision)
    model, processor, device, family = load_model(source, dtype=cfg.model.dtype, device=cfg.model.device)
    train_examples = splits.train + splits.val if settings.train_and_val else splits.train
    train = sft_dataset(sft_rows(program, train_examples, processor, family))
    val = None if settings.train_and_val else sft_dataset(sft_rows(program, splits.val, processor, family))
    steps_per_epoch = math.ceil(len(train) / (settings.batch_size * settings.grad_accum))
    save_steps = settings.save_steps or steps_per_epoch
    root = checkpoint_root(
        cfg.run.cache_dir,
        training_key(
            {
                "model": f"{source.name}@{source.fingerprint}",
                "split": splits.fingerprint,
                "prompt": render_prompt(program, cfg.task.structured_generation),
                "settings": asdict(settings),
                "seed": cfg.seed,
                "dtype": cfg.model.dtype,
            }
        ),
    )
    args = SFTConfig(
        output_dir=str(root),
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps or -1,
        learning_rate=settings.lr,
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum,
        logging_steps=1,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        eval_strategy="no" if val is None else "steps",
        eval_steps=save_steps,
        load_best_model_at_end=val is not None,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=[],
        disable_tqdm=True,
        use_cpu=device.type == "cpu",
        bf16=model.dtype == torch.bfloat16,
        completion_only_loss=True,
        max_length=None,
    )
    lora = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
    )
    progress = RichProgressCallback(console)
    callbacks = [progress] + ([EarlyStoppingCallback(settings.patience)] if val is not None else [])
    set_seed(cfg.seed)  # the adapter's initial weights
    try:
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=val,
            processing_class=processor,
            peft_config=lora,
            callbacks=callbacks,
        )
    except ValueError as exc:
        if "target" not in str(exc).lower():
            raise
        raise FinetuneError(
            f"the LoRA target modules match no layer of {cfg.model.id!r} ({exc}); pass "
            "--target-modules with a regex over its module names"
        ) from None
    trainer.remove_callback(PrinterCallback)  # the rich bar shows the losses; training.json keeps them all
    resume = last_complete_checkpoint(root)
    try:
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        progress.stop()
    adapter_dir = run.path / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    trainable, total = trainer.model.get_nb_trainable_parameters()
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    training = {
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epoch": state.epoch,
        "resumed_from_step": progress.started_at,
        "steps_run": state.global_step - (progress.started_at or 0),
        "train_loss": losses[-1] if losses else None,
        "best_val_loss": state.best_metric,
        "best_checkpoint": state.best_model_checkpoint,
        "train_and_val": settings.train_and_val,
        "n_train": len(train),
        "n_val": 0 if val is None else len(val),
        "checkpoints": str(root),
        "parameters": {"trainable": trainable, "total": total - trainable},  # total: the merged model's
        "base_fingerprint": source.fingerprint,
        "settings": asdict(settings),
        "log_history": state.log_history,
    }
    del trainer, model
    gc.collect()
    return adapter_dir, training
