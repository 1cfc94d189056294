"""The writing model, configured once (``optimizer.prompt_model``) for every method that writes prompts.

MIPROv2 proposes instructions with it, GEPA reflects with it, SIMBA writes its rules with it;
random search writes nothing. It is resolved once per optimize (a prompt VLM loads once, not per
method or trial), and what it can see is stated, not assumed: a server is probed with one tiny
image request, a LiteLLM id is looked up in LiteLLM's model map, a local directory is a VLM.

Example::

    prompt = PromptModel.resolve(cfg)
    prompt.statement()     # "prompt model: http://host:8000/v1 (sees images: no; probed with ...)"
    prompt.writer(lm)      # the LM that writes: the prompt model, the task model, or None
"""

from __future__ import annotations

from dataclasses import dataclass

import dspy

from vlmopt.config import TaskConfig
from vlmopt.serving.factory import create_prompt_lm, job_owned

NO_PROMPT_MODEL = "none"


@dataclass(frozen=True)
class PromptModel:
    """``lm`` None means the task model writes (``prompt_model`` unset) or, with ``none``, nobody does."""

    lm: dspy.LM | None
    sees_images: bool
    source: str | None = None  # optimizer.prompt_model as configured (None: the task model)
    how: str = "passed by the caller"

    @property
    def writes(self) -> bool:
        """Whether any model writes prompts (False only for ``prompt_model: none``)."""
        return self.source != NO_PROMPT_MODEL

    def writer(self, task_lm: dspy.LM) -> dspy.LM | None:
        """The LM that writes: the prompt model, else the task model, else (``none``) nobody."""
        return self.lm or (task_lm if self.writes else None)

    def statement(self) -> str:
        """One line for the run's notes: which model writes and whether it sees images, and how we know."""
        if not self.writes:
            return "prompt model: none (only the config's prompt and optimizer.instructions are candidates)"
        name = self.source or "the task model"
        return f"prompt model: {name} (sees images: {'yes' if self.sees_images else 'no'}; {self.how})"

    @classmethod
    def resolve(cls, cfg: TaskConfig, given: dspy.LM | None = None) -> PromptModel:
        """The prompt model a caller passed (assumed to see images), else the config's (built for the job)."""
        if given is not None:
            return cls(given, True, "the given prompt LM")
        lm, sees_images, how = create_prompt_lm(cfg)
        return cls(job_owned(lm) if lm is not None else None, sees_images, cfg.optimizer.prompt_model, how)
