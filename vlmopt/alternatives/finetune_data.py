"""Training rows for LoRA fine-tuning: each labelled image as the program asks about it.

A row is what TRL's vision prompt-completion collator takes: the prompt text exactly as the
in-process engine renders it for this program (``render_program_prompt``: the program's adapter,
DSPy's request conversion, the model's chat template with its family's switches), its images, and
the completion: the answer in the program's own form — the compact JSON ``{"label":"cat"}`` the
grammar and the label scorer write (or the bare label under free-text decoding) — plus the end
token. The collator tokenizes the completion on its own, as the label scorer does, and masks the
prompt, so the loss falls on the answer only.

Example::

    rows = sft_rows(program, splits.train, processor, family)
    rows[0]["prompt"][-10:], rows[0]["completion"]   # '...Assistant:', '{"label":"2"}<end_of_utterance>'
"""

from __future__ import annotations

import dspy

from vlmopt.programs import Classify
from vlmopt.serving.chat_inputs import render_program_prompt
from vlmopt.serving.families import ModelFamily


def sft_rows(program: Classify, examples: list[dspy.Example], processor, family: ModelFamily) -> list[dict]:
    """``{"prompt", "completion", "images"}`` per example (a single-label example's ``label`` is the answer)."""
    end = processor.tokenizer.eos_token
    template_kwargs = dict(family.template_kwargs)
    rows = []
    for example in examples:
        prompt, images = render_program_prompt(
            processor, program.adapter, program.signature, program.predict.demos, example.image, **template_kwargs
        )
        answer = program.adapter.format_assistant_message_content(program.signature, {"label": example.label})
        rows.append({"prompt": prompt, "completion": answer + end, "images": images})
    return rows


def sft_dataset(rows: list[dict]):
    """The rows as a ``datasets.Dataset`` (images stored losslessly), what ``SFTTrainer`` reads."""
    from datasets import Dataset

    return Dataset.from_list(rows)
