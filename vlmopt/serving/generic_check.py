"""The load-time check for an architecture outside the model-family registry.

Label scoring reuses each prompt's cache for the answers (``label_scoring.score_candidates``).
That is exact only where the engine knows how the family numbers positions; a family it does not
know could score every label wrongly without any error, or fail with a tensor-shape error in the
middle of a run. So before an unregistered checkpoint serves a request, one probe prompt with an
image is scored both ways — on the cache, and by a plain forward over each whole sequence — and
the model is refused, naming the supported families, unless the two agree.
"""

from __future__ import annotations

import jinja2
import torch
from PIL import Image

from vlmopt.serving.chat_inputs import ChatInput
from vlmopt.serving.families import GENERIC, UnsupportedModelError, scoring_inputs, supported_families
from vlmopt.serving.label_scoring import ClassifierField, candidate_tokens, score_candidates

TOLERANCE = {torch.float32: 1e-3}
"""Largest difference in summed log-probability accepted between cached and plain scoring, by dtype.
Half-precision kernels differ between a cached and an unsplit pass by more than float32's 1e-3 on
correct positions; wrong positions move the scores by far more (0.1-1 on the tiny Qwen-VL builds)."""

HALF_PRECISION_TOLERANCE = 5e-2

PROBE_FIELD = ClassifierField("label", ("yes", "no"))


@torch.inference_mode()
def plain_scores(model, inputs: dict[str, torch.Tensor], answers: tuple[tuple[int, ...], ...],
                 shared: int) -> list[float]:
    """Each answer's log-prob after the ``shared`` tokens, from one unsplit forward of one unpadded prompt."""
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    scores = []
    for answer in answers:
        ids = torch.cat([inputs["input_ids"], torch.tensor([answer], device=inputs["input_ids"].device)], dim=1)
        logprobs = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0].float().log_softmax(-1)
        start = ids.shape[1] - len(answer)
        scores.append(sum(float(logprobs[start + t - 1, answer[t]]) for t in range(shared, len(answer))))
    return scores


def check_generic_scoring(engine) -> None:
    """Refuse ``engine``'s model unless cached label scoring equals a plain forward on a probe prompt."""
    chat = ChatInput(messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Yes?"}]}],
                     images=[Image.new("RGB", (64, 64), (128, 128, 128))])
    name = f"{engine.source.name!r} ({getattr(engine.model.config, 'model_type', '?')})"
    try:
        batch = engine._encode([engine.render_prompt(chat)], [chat.images])
        inputs = scoring_inputs(GENERIC, batch)
        candidates = candidate_tokens(engine.tokenizer, PROBE_FIELD)
        cached = score_candidates(engine.model, inputs, [candidates], pad_token_id=engine.pad_token_id)[0]
        plain = plain_scores(engine.model, inputs, candidates.tokens, candidates.shared)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError, KeyError, jinja2.TemplateError) as exc:
        raise _unsupported(name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}") from exc
    gap = max(abs(a - b) for a, b in zip(cached, plain, strict=True))
    if gap > TOLERANCE.get(engine.model.dtype, HALF_PRECISION_TOLERANCE):
        raise _unsupported(name, f"label log-probs differ from a plain forward by {gap:.3g}")


def _unsupported(name: str, reason: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"{name} is not a model family vlmopt knows, and label scoring on it fails the load-time check ({reason}). "
        f"Supported families: {supported_families()}"
    )
