"""`dspy.LM` for an OpenAI-compatible server (vLLM first of all).

Why not plain `dspy.LM("openai/<model>", api_base=...)` or `"hosted_vllm/<model>"`: DSPy only
sends a `json_schema` response_format when it knows the model honours one, and it knows nothing
about a model served from an arbitrary URL, so JSONAdapter falls back to loose JSON mode or to no
response_format at all (dspy issues 8220, 9670) and the server never constrains the labels.
DSPy 3.4's own answer is to declare the endpoint as a provider and state what it supports; this
module declares one provider, `vlmopt-server`, that speaks vLLM's dialect of OpenAI chat
completions and states `response_schema=True`. The LM's `api_base` picks the actual server.

The API key is read from the environment variable you name and handed to DSPy, which never
writes it out: `LM.dump_state()` drops `api_key`, LM history drops `api_*` arguments, and the
response cache ignores it. The model string carries only the served model name.

Example:
    >>> lm = create_openai_lm("http://127.0.0.1:8000/v1", "HuggingFaceTB/SmolVLM-256M-Instruct")
    >>> lm.model
    'vlmopt-server/HuggingFaceTB/SmolVLM-256M-Instruct'
"""

from __future__ import annotations

import os

import dspy
from dspy.lm15 import AccessPolicy, ModelSupport, OpenAIChatCompat, ProviderDefinition, register_provider

from vlmopt.config import ConfigError

PROVIDER = "vlmopt-server"
"""Provider prefix of the model strings this module builds."""

_VLLM_CHAT = OpenAIChatCompat(
    instruction_role="system",
    max_tokens_field="max_tokens",
    stream_usage="include",
    thinking_format="none",
    tool_result_name="omit",
    strict_tools="omit",
    cache_control="none",
    tool_result_media="reject",
    json_schema="send",
)
"""vLLM's chat-completions spellings (as in lm15's `vllm` preset), with json_schema always sent
and no reasoning dial (the small VLMs served here have none)."""


def register_server_provider() -> None:
    """Declare the `vlmopt-server` provider to DSPy (idempotent; `create_openai_lm` calls it).

    A registration is process state that `dspy.LM` binds at construction, so any code that
    rebuilds an LM from saved state (`dspy.LM.load_state`) must import this module first.
    """
    definition = ProviderDefinition.chat(
        # The default base_url is vLLM's; every LM built here passes its own api_base.
        AccessPolicy(provider=PROVIDER, base_url="http://localhost:8000/v1"),
        compat=_VLLM_CHAT,
        placeholder_key="EMPTY",
        note="OpenAI-compatible server declared by vlmopt (vLLM, or any server honouring json_schema).",
    )
    register_provider(definition, supports=ModelSupport(response_schema=True, function_calling=False, reasoning=False))


def create_openai_lm(
    base_url: str,
    model: str,
    *,
    api_key_env: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 256,
    timeout: float = 120.0,
    num_retries: int = 3,
    logprobs: bool = True,
    cache: bool = True,
    **kwargs: object,
) -> dspy.LM:
    """A `dspy.LM` that talks to the OpenAI-compatible server at `base_url` (`.../v1`).

    Args:
        base_url: the server's OpenAI base URL, e.g. `VLLMServer.base_url`.
        model: the served model name (`--served-model-name`, by default the model path/id).
        api_key_env: name of the environment variable holding the API key; None for a keyless
            local server. The variable must be set when this is called.
        temperature, max_tokens: generation defaults (greedy, enough for a JSON label).
        timeout: seconds per HTTP request; num_retries: retries of transient failures
            (connection errors, 429, 5xx) with DSPy's exponential backoff.
        logprobs: ask for token log-probabilities (a per-prediction confidence).
        cache: use DSPy's response cache.
        **kwargs: more default request parameters, e.g. `top_logprobs=5`.

    Raises:
        ConfigError: `api_key_env` is named but not set.
    """
    register_server_provider()
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise ConfigError(
                f"environment variable {api_key_env} (backend.api_key_env, the API key for {base_url}) is not set"
            )
        kwargs["api_key"] = api_key
    return dspy.LM(
        f"{PROVIDER}/{model}",
        api_base=base_url.rstrip("/"),
        temperature=temperature,
        max_tokens=max_tokens,
        timeout=timeout,
        num_retries=num_retries,
        logprobs=logprobs,
        cache=cache,
        **kwargs,
    )


def served_model(base_url: str) -> str:
    """The one model an OpenAI-compatible server serves (``GET /models``); a clear error otherwise."""
    import openai

    try:
        ids = [m.id for m in openai.OpenAI(base_url=base_url, api_key="EMPTY", timeout=30).models.list()]
    except openai.OpenAIError as exc:
        raise ConfigError(f"cannot list the models served at {base_url} ({type(exc).__name__}); start the "
                          "server or fix optimizer.prompt_model") from None
    if len(ids) != 1:
        raise ConfigError(f"{base_url} serves {ids or 'no model'}: name one as optimizer.prompt_model "
                          f"'{base_url}#<model>'")
    return ids[0]


PROBE_IMAGE = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP8z4AdMOEQH6QSAM1BAQ/oQeJvAAAAAElFTkSuQmCC"
)
"""An 8x8 red PNG: the probe a prompt model's server accepts only if the model takes images."""


def sees_images(lm: dspy.LM) -> bool:
    """Whether the server behind ``lm`` accepts an image in a chat message (one short request).

    A text-only model on vLLM refuses image content with an error; any error reads as "no images"
    (the methods then show the writer the feedback text only, which is always safe).
    """
    content = [{"type": "text", "text": "What colour is this image? One word."},
               {"type": "image_url", "image_url": {"url": PROBE_IMAGE}}]
    try:
        lm(messages=[{"role": "user", "content": content}], max_tokens=4)
    except Exception:  # noqa: BLE001 - a refusal of any kind means the writer is shown no images
        return False
    return True
