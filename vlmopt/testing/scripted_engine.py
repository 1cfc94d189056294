"""A scripted DSPy engine — a **test double at the model edge**, never a backend users run.

Random-weight VLMs answer noise, so they cannot show that a prompt changes accuracy or that an
invalid answer ("pug") is recorded as such. This engine stands where the VLM would: it receives
the real ``dspy.lm15.Request`` that DSPy builds (instructions, demo turns, decoded images) and
answers through a Python function the test supplies. Everything above it — adapters, programs,
Evaluate, MIPROv2, caching — runs for real.

Example::

    engine = ScriptedEngine(lambda call: "cat" if call.query_image.getpixel((0, 0))[0] > 128 else "dog")
    lm = scripted_lm(engine)
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import dspy
from dspy.lm15 import Message, Response, TextPart, Usage
from dspy.lm15 import ImagePart
from PIL import Image


@dataclass
class ScriptedCall:
    """What the scripted model 'sees' of one request."""

    system: str
    turns: list[tuple[str, str, list[Image.Image]]] = field(default_factory=list)  # (role, text, images)
    response_format: dict | None = None

    @property
    def query_text(self) -> str:
        return self.turns[-1][1]

    @property
    def query_image(self) -> Image.Image | None:
        images = self.turns[-1][2]
        return images[-1] if images else None

    @property
    def n_demos(self) -> int:
        return sum(1 for role, _, _ in self.turns if role == "assistant")


def _decode(part: ImagePart) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(part.data))).convert("RGB")


class ScriptedEngine:
    """Answers each request with ``answer(ScriptedCall) -> str``; counts them in ``stats.requests``."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "max_tokens", "temperature"})

    def __init__(self, answer: Callable[[ScriptedCall], str]):
        self.answer = answer
        self.stats = SimpleNamespace(requests=0)  # same counter name as the in-process engine
        self._lock = threading.Lock()

    def complete(self, request) -> Response:
        system = request.system if isinstance(request.system, str) or request.system is None else "".join(
            getattr(p, "text", "") for p in request.system
        )
        call = ScriptedCall(system=system or "", response_format=request.config.response_format)
        for message in request.messages:
            texts = [p.text for p in message.parts if isinstance(p, TextPart)]
            images = [_decode(p) for p in message.parts if isinstance(p, ImagePart)]
            call.turns.append((message.role, "\n".join(texts), images))
        with self._lock:
            self.stats.requests += 1
        text = self.answer(call)
        return Response(
            id=None, model="scripted", message=Message.assistant([TextPart(text)]), finish_reason="stop",
            usage=Usage(input_tokens=0, output_tokens=len(text.split()), total_tokens=len(text.split())),
        )

    def stream(self, request):
        raise NotImplementedError("the scripted test double does not stream")

    def close(self) -> None:
        pass


def scripted_lm(engine: ScriptedEngine, name: str = "scripted", cache: bool = False) -> dspy.LM:
    """A ``dspy.LM`` over the scripted engine; ``name`` keeps DSPy's cache keys apart between scripts."""
    return dspy.LM(f"vlmopt-test/{name}", engine=engine, cache=cache, temperature=0.0, max_tokens=64)
