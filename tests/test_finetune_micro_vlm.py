"""On the trained micro-VLM, LoRA fine-tuning under the vague prompt learns which question is meant.

The demo's task (which row holds the shape) under "Describe the image.": the prompt leaves row vs
column open and the base model answers near 50%; the prompt optimizer fixes the instruction
(tests/test_micro_vlm_optimize.py); fine-tuning keeps the vague instruction and changes the weights
instead. Real model, real peft/TRL training, in-process engine on the untouched test split.
"""

import pytest

from vlmopt.alternatives.finetune import FinetuneSettings, finetune_task
from vlmopt.demo import BASELINE_PROMPT, offline_demo_config
from vlmopt.pipeline import evaluate_task


@pytest.mark.slow
def test_lora_under_the_vague_prompt_beats_the_vague_baseline_on_test(tmp_path):
    cfg = offline_demo_config(tmp_path)
    assert cfg.task.system_prompt == BASELINE_PROMPT
    _, baseline = evaluate_task(cfg, split="test")
    outcome = finetune_task(cfg, settings=FinetuneSettings(epochs=8, lr=5e-3))
    tuned = outcome.metrics["accuracy"]
    assert tuned >= 0.9 and tuned - baseline.metrics["accuracy"] >= 0.3, (baseline.metrics["accuracy"], tuned)
    assert outcome.metrics["invalid_rate"] == 0.0 and outcome.training["best_val_loss"] is not None
