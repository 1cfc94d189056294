"""Few-shot image demos must fit the model's context (dspy issue 1954): count before running.

Each demo adds an image (hundreds of tokens for real VLMs) plus its turns. Before the search,
the prompt of the program is rendered with 0..k demos and counted by the backend's own
processor; demos are capped to what fits with room for the answer, and the cap is reported.
Backends that cannot count tokens (remote servers) leave the cap to the configured maximum.
"""

from __future__ import annotations

import dspy
from dspy.lm15 import request_from_openai_chat

from vlmopt.programs import Classify


def prompt_tokens(program: Classify, demos: list[dspy.Example], query: dspy.Example, lm: dspy.LM) -> int | None:
    """Prompt tokens of ``program`` with ``demos`` for ``query``; None if the backend can't count."""
    count = getattr(lm.engine, "count_prompt_tokens", None)
    if count is None:
        return None
    messages = program.adapter.format(program.signature, demos, {"image": query.image})
    return count(request_from_openai_chat({"model": "count", "messages": messages}))


def max_demos_that_fit(
    program: Classify, pool: list[dspy.Example], lm: dspy.LM, wanted: int, answer_tokens: int
) -> tuple[int, str | None]:
    """(demos that fit, a note when fewer than ``wanted``) — measured on the pool's first items."""
    limit = getattr(lm.engine, "context_length", None)
    if limit is None or not pool or wanted == 0:
        return wanted, None
    budget = limit - answer_tokens
    for k in range(min(wanted, len(pool) - 1), -1, -1):
        used = prompt_tokens(program, pool[1 : k + 1], pool[0], lm)
        if used is None:
            return wanted, None
        if used <= budget:
            if k < wanted:
                return k, f"few-shot demos capped at {k} (of {wanted}): {used} prompt tokens of a {limit}-token context"
            return k, None
    return 0, f"even the zero-shot prompt ({used} tokens) exceeds the {limit}-token context; check image sizes"
