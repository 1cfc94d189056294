"""DSPy's canonical request -> the chat messages and PIL images a transformers processor takes.

DSPy 3.4 hands an engine a ``dspy.lm15.Request``: an optional system prompt and user/assistant
turns made of parts. Few-shot demos are earlier user/assistant turns; a ``dspy.Image`` is an
``ImagePart`` carrying base64 bytes (no ``data:`` prefix). VLM chat templates want the
transformers form instead: ``{"role", "content": [{"type": "text" | "image", ...}]}`` with the
images passed separately, in the order their ``{"type": "image"}`` slots appear.

Only what a local VLM can read is accepted; anything else (audio, tool calls, remote image URLs,
which would need the network) is refused with a message naming the part, never dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

from dspy.lm15 import DataPart, ImagePart, Request, TextPart, request_from_openai_chat
from PIL import Image
from transformers import BatchFeature

from vlmopt.datasets.images import normalize_image, open_image

SUPPORTED_ROLES = ("user", "assistant")


@dataclass
class ChatInput:
    """One request as chat messages (transformers content-list form) plus its images, in order."""

    messages: list[dict] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)


def chat_input_from_request(request: Request) -> ChatInput:
    """Convert the system prompt and every turn; raise ``ValueError`` naming a part we cannot send."""
    chat = ChatInput()
    if request.system is not None:
        parts = (TextPart(request.system),) if isinstance(request.system, str) else tuple(request.system)
        chat.messages.append({"role": "system", "content": _content(parts, "system", chat.images)})
    for index, message in enumerate(request.messages):
        if message.role not in SUPPORTED_ROLES:
            raise ValueError(f"message {index} has role {message.role!r}; a local VLM takes only "
                             f"{', '.join(SUPPORTED_ROLES)} turns and a system prompt")
        chat.messages.append({"role": message.role,
                              "content": _content(message.parts, f"message {index}", chat.images)})
    if request.tools:
        raise ValueError("tools were given, but the transformers engine does not do tool calling")
    return chat


def _content(parts: tuple, where: str, images: list[Image.Image]) -> list[dict]:
    content = []
    for number, part in enumerate(parts):
        if isinstance(part, TextPart):
            content.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            try:
                images.append(decode_image(part))
            except ValueError as exc:
                raise ValueError(f"{where}, part {number}: {exc}") from exc
            content.append({"type": "image"})
        elif isinstance(part, DataPart):
            content.append({"type": "text", "text": json.dumps(part.value, ensure_ascii=False)})
        else:
            raise ValueError(f"{where}, part {number}: a {part.type!r} part cannot be sent to a local VLM "
                             "(text, images and JSON data only)")
    return content


def decode_image(part: ImagePart) -> Image.Image:
    """The part's bytes as an upright RGB PIL image (the dataset loader's rules; size unchanged)."""
    image = open_image(_image_bytes(part))
    return normalize_image(image, max_side=max(image.size))


def _image_bytes(part: ImagePart) -> bytes:
    if part.data is not None:
        return _b64(part.data)
    if part.path is not None:
        return Path(part.path).read_bytes()
    if part.url is not None and part.url.startswith("data:"):
        _, _, payload = part.url.partition(",")
        return _b64(payload)
    raise ValueError("only inline or local images can be read by a local VLM "
                     f"(got {'url ' + part.url[:60] if part.url else 'a file id'}); pass the image bytes or a path")


def _b64(data: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image data is not valid base64 ({exc})") from exc


def chat_input_from_messages(messages: list[dict]) -> ChatInput:
    """A DSPy adapter's ``format`` output (OpenAI-form messages) as an engine receives it.

    The messages go through DSPy's own request conversion, as ``dspy.LM`` sends them to an engine,
    then :func:`chat_input_from_request`: what trains a model (``micro_vlm``, ``alternatives.finetune``)
    sees the prompt the program sends, byte for byte.
    """
    return chat_input_from_request(request_from_openai_chat({"model": "local", "messages": messages}))


def render_chat_template(processor, chat: ChatInput, **template_kwargs) -> str:
    """The model's own chat template applied, ending with the assistant turn's opening.

    ``template_kwargs`` are the template's own switches (``enable_thinking=False`` for Qwen3.5, whose
    generation prompt otherwise opens a reasoning block before the answer).
    """
    return processor.apply_chat_template(chat.messages, add_generation_prompt=True, tokenize=False,
                                         **template_kwargs)


def encode_prompts(processor, prompts: list[str], images: list[list[Image.Image]], **kwargs):
    """The processor's tensors for rendered prompts (``render_chat_template``), one row per prompt.

    Special tokens come from the chat template alone, as ``apply_chat_template(tokenize=True)``
    does: a tokenizer that also adds BOS itself (Gemma 3's) would otherwise start every prompt
    with two. A batch without images goes to the tokenizer, since some processors (PaliGemma's)
    refuse text alone.
    """
    if any(images):
        return processor(text=prompts, images=images, add_special_tokens=False, return_tensors="pt", **kwargs)
    return BatchFeature(dict(processor.tokenizer(prompts, add_special_tokens=False, return_tensors="pt", **kwargs)))


def render_program_prompt(processor, adapter, signature, demos: list, image, **template_kwargs) -> tuple[str, list]:
    """(prompt text, its images): what an engine runs when a program asks about ``image``.

    ``adapter.format`` (the program's DSPy adapter: instruction, demos, the query image), DSPy's
    request conversion, then the model's chat template: the one path training shares with serving.
    """
    chat = chat_input_from_messages(adapter.format(signature, demos, {"image": image}))
    return render_chat_template(processor, chat, **template_kwargs), chat.images


__all__ = ["ChatInput", "chat_input_from_messages", "chat_input_from_request", "decode_image", "encode_prompts",
           "render_chat_template", "render_program_prompt"]
