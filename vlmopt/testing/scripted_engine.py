"""A scripted DSPy engine — a **test double at the model edge**, never a backend users run.

Random-weight VLMs answer noise, so they cannot show that a prompt changes accuracy or that an
invalid answer ("pug") is recorded as such. This engine stands where the VLM would: it receives
the real ``dspy.lm15.Request`` that DSPy builds (instructions, demo turns, decoded images) and
answers through a Python function the test supplies. Everything above it — adapters, programs,
Evaluate, MIPROv2, caching — runs for real.

The function returns the answer text — or, for a classifier request, a label distribution
(``{"cat": 0.3, "dog": 0.7}``), which the engine answers the way the real engines do: the most
likely label, with the distribution attached as *measured* label probabilities.

Example::

    engine = ScriptedEngine(lambda call: "cat" if call.query_image.getpixel((0, 0))[0] > 128 else "dog")
    lm = scripted_lm(engine)
"""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace

import dspy
from dspy.lm15 import ImagePart, Message, Response, TextPart, Usage
from PIL import Image

from vlmopt.serving import label_scoring


@dataclass
class ScriptedCall:
    """What the scripted model 'sees' of one request."""

    system: str
    turns: list[tuple[str, str, list[Image.Image]]] = field(default_factory=list)  # (role, text, images)
    response_format: dict | None = None
    temperature: float | None = None  # what the caller asked for (SIMBA samples at 1.0)

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
    """Answers each request with ``answer(ScriptedCall) -> str | {label: p}``; counts them in ``stats.requests``."""

    supports_response_schema = True
    supported_params = frozenset({"response_format", "max_tokens", "temperature", "logprobs", "top_logprobs"})

    def __init__(self, answer: Callable[[ScriptedCall], str | Mapping[str, float]]):
        self.answer = answer
        self.stats = SimpleNamespace(requests=0)  # same counter name as the in-process engine
        self._lock = threading.Lock()

    def complete(self, request) -> Response:
        system = request.system if isinstance(request.system, str) or request.system is None else "".join(
            getattr(p, "text", "") for p in request.system
        )
        call = ScriptedCall(system=system or "", response_format=request.config.response_format,
                            temperature=request.config.temperature)
        for message in request.messages:
            texts = [p.text for p in message.parts if isinstance(p, TextPart)]
            images = [_decode(p) for p in message.parts if isinstance(p, ImagePart)]
            call.turns.append((message.role, "\n".join(texts), images))
        with self._lock:
            self.stats.requests += 1
        answer = self.answer(call)
        words = 1 if isinstance(answer, Mapping) else len(answer.split())
        usage = Usage(input_tokens=0, output_tokens=words, total_tokens=words)
        if isinstance(answer, Mapping):
            return self._measured(request, answer, usage)
        return Response(id=None, model="scripted", message=Message.assistant([TextPart(answer)]),
                        finish_reason="stop", usage=usage)

    @staticmethod
    def _measured(request, probabilities: Mapping[str, float], usage: Usage) -> Response:
        """A classifier answer as the real engines give it: the argmax label, its distribution attached."""
        field = label_scoring.classifier_field(request.config.response_format)
        if field is None or set(probabilities) != set(field.labels):
            raise ValueError("a scripted distribution answers only a classifier request over the same labels")
        label = max(field.labels, key=probabilities.get)
        wants_logprobs = request.config.logprobs is not None
        logprobs = label_scoring.decision_logprobs(label, probabilities) if wants_logprobs else None
        return Response(id=None, model="scripted", finish_reason="stop", usage=usage, logprobs=logprobs,
                        message=Message.assistant([label_scoring.answer_part(field, label, probabilities)]))

    def stream(self, request):
        raise NotImplementedError("the scripted test double does not stream")

    def close(self) -> None:
        pass


def scripted_lm(engine: ScriptedEngine, name: str = "scripted", cache: bool = False) -> dspy.LM:
    """A ``dspy.LM`` over the scripted engine; ``name`` keeps DSPy's cache keys apart between scripts."""
    return dspy.LM(f"vlmopt-test/{name}", engine=engine, cache=cache, temperature=0.0, max_tokens=64, logprobs=True)
