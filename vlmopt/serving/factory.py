"""``create_lm(cfg)``: the task config's backend as a ``dspy.LM`` — the one place backends are chosen.

Programs talk to ``dspy.LM`` and never know which backend answers; the config's ``backend.kind``
picks the in-process transformers engine (the embedded default) or an OpenAI-compatible server
(vLLM). Generation settings come from ``model``; the API key only by the env var's *name*.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from contextvars import ContextVar

import dspy

from vlmopt.config import TaskConfig

_JOB_LMS: ContextVar[ExitStack | None] = ContextVar("vlmopt_job_lms", default=None)


def closes_the_lms_it_creates(job):
    """Decorates a job (evaluate, optimize): every LM built here while it runs is closed when it ends.

    An in-process engine holds the weights and a worker thread until closed. The job may build
    LMs deep inside (a search trial's engine, a prompt model), so the code that builds one for the
    job hands it to :func:`job_owned`. An LM the caller passed in — or one a caller's own
    ``lm_factory`` builds — is the caller's, and stays open.
    """
    @functools.wraps(job)
    def run(*args, **kwargs):
        with ExitStack() as created:
            token = _JOB_LMS.set(created)
            try:
                return job(*args, **kwargs)
            finally:
                _JOB_LMS.reset(token)

    return run


def job_owned(lm: dspy.LM) -> dspy.LM:
    """``lm``, built for the running job: closed when the job ends (outside a job, nothing changes)."""
    job = _JOB_LMS.get()
    if job is not None:
        job.callback(close_lm, lm)
    return lm


def create_lm(cfg: TaskConfig) -> dspy.LM:
    """The LM a task config describes (loads the model once for the in-process backend)."""
    if cfg.backend.kind == "openai":
        from vlmopt.serving.openai_lm import create_openai_lm
        from vlmopt.serving.vllm_probabilities import create_vllm_lm

        create = create_vllm_lm if cfg.backend.label_probabilities else create_openai_lm
        return create(
            cfg.backend.base_url,
            cfg.backend.served_model_name or cfg.model.id,
            api_key_env=cfg.backend.api_key_env,
            temperature=cfg.model.temperature,
            max_tokens=cfg.model.max_new_tokens,
            timeout=cfg.backend.timeout_s,
            num_retries=cfg.backend.num_retries,
        )
    from vlmopt.serving.transformers_engine import create_lm as create_transformers_lm

    return create_transformers_lm(
        cfg.model.id,
        revision=cfg.model.revision,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        max_new_tokens=cfg.model.max_new_tokens,
        temperature=cfg.model.temperature,
        max_batch_size=cfg.backend.max_batch_size,
        max_wait_ms=cfg.backend.max_wait_ms,
        prefix_cache_mb=cfg.backend.prefix_cache_mb,
        seed=cfg.seed,
        structured=cfg.task.structured_generation,
        adapter=cfg.model.adapter,
    )


def with_structured_generation(lm: dspy.LM, structured: bool) -> dspy.LM:
    """``lm`` answering with structured generation on or off, on the weights it has already loaded.

    The in-process engine states the setting to DSPy, so the other setting is a copy of the LM over
    a view of the same engine (``TransformersEngine.with_structured``); a server LM has no such
    switch (the program's adapter decides), so it is ``lm`` itself.
    """
    switch = getattr(lm.engine, "with_structured", None)
    if switch is None:
        return lm
    engine = switch(structured)
    return lm if engine is lm.engine else lm.copy(engine=engine)


def close_lm(lm: dspy.LM) -> None:
    """Release what an LM holds: DSPy's own connection pools and a custom engine (its worker, its client).

    ``dspy.LM.close`` leaves custom engines alone (they are borrowed), so the one who built the
    engine closes it, here.
    """
    lm.close()
    close = None if isinstance(lm.engine, str) else getattr(lm.engine, "close", None)
    if close is not None:
        close()


def create_prompt_lm(cfg: TaskConfig) -> tuple[dspy.LM | None, bool, str]:
    """(prompt LM, whether it sees images, how that was found) for the methods that write prompts.

    ``optimizer.prompt_model``: unset -> None, the task VLM itself writes (it sees the images);
    ``none`` -> None, no writer (only the config's prompt and ``optimizer.instructions`` are searched);
    an ``http(s)://`` URL -> that OpenAI-compatible server (``#<model>`` picks a served model, else
    its only one), probed with one tiny image request; a local directory -> that VLM in-process;
    anything else -> a LiteLLM model id (images are shown only if LiteLLM says it supports vision).
    """
    from pathlib import Path

    name = cfg.optimizer.prompt_model
    if name is None:
        return None, True, "the task VLM writes (it sees the images)"
    if name == "none":
        return None, False, "no prompt model"
    if name.startswith(("http://", "https://")):
        from vlmopt.serving.openai_lm import create_openai_lm, sees_images, served_model

        url, _, model = name.partition("#")
        lm = create_openai_lm(url, model or served_model(url), temperature=1.0, max_tokens=1024, logprobs=False)
        seen = sees_images(lm)
        return lm, seen, f"probed with one image request: {'accepted' if seen else 'refused'}"
    if Path(name).is_dir():
        from vlmopt.serving.transformers_engine import create_lm as create_transformers_lm

        lm = create_transformers_lm(name, device=cfg.model.device, max_new_tokens=512, seed=cfg.seed)
        return lm, True, "an in-process VLM"
    import litellm

    try:
        seen = bool(litellm.supports_vision(model=name))
    except Exception:  # noqa: BLE001 - unknown to LiteLLM's model map: assume text-only
        seen = False
    return dspy.LM(name, temperature=1.0, max_tokens=1024), seen, "LiteLLM's model map (supports_vision)"


def model_calls(lm: dspy.LM) -> int | None:
    """Requests that reached the model so far (DSPy cache hits never do); None if the backend can't say."""
    stats = getattr(lm.engine, "stats", None)
    return None if stats is None else stats.requests
