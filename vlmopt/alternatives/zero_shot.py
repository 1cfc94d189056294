"""Zero-shot classification with a contrastive model: class prompts, prompt ensembling, label probabilities.

Each class is a text embedding: the class name put into a few templates ("a photo of a {}."),
each template's embedding normalised, their mean normalised again (the prompt ensembling of the
CLIP paper, which gains a few points over one template). An image's logit for a class is the
model's own: ``exp(logit_scale) * cos(image, class) + logit_bias`` (the bias is SigLIP's; CLIP
has none).

The label distribution is the softmax of those logits, for both families, and that is the right
rule for each. CLIP was trained with a softmax over candidates. SigLIP was trained with an
independent sigmoid per (image, text) pair, so ``sigmoid(logit)`` is "this prompt matches",
not a distribution over classes; given that exactly one class is true, the posterior of class
``c`` is ``s_c prod_{j!=c}(1 - s_j) / sum_k s_k prod_{j!=k}(1 - s_j)``, whose odds reduce to
``exp(logit_c)`` — the softmax again (the bias cancels). So probabilities sum to 1 and ECE is
measured on a real distribution in both cases.

Example::

    classes = class_embeddings(encoder, ["cat", "dog"], DEFAULT_TEMPLATES)
    probs = label_probabilities(image_features, classes, scale=encoder.logit_scale, bias=encoder.logit_bias)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlmopt.errors import VlmoptError

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "{}",
)
"""A small ensemble in the style of CLIP's ImageNet prompts; ``--template`` replaces it."""


class TemplateError(VlmoptError, ValueError):
    """A prompt template that does not hold exactly one ``{}`` slot for the class name."""


def check_templates(templates: Sequence[str]) -> list[str]:
    """The templates, each with exactly one ``{}``; anything else is refused by name."""
    if not templates:
        raise TemplateError("give at least one --template, e.g. 'a photo of a {}.'")
    for template in templates:
        if template.count("{}") != 1:
            raise TemplateError(
                f"template {template!r} needs exactly one {{}} where the class name goes, e.g. 'a photo of a {{}}.'"
            )
    return list(templates)


def class_text(label: str) -> str:
    """How a label reads in a prompt: dataset labels like ``golden_retriever`` as words."""
    return label.replace("_", " ")


def prompts_for(label: str, templates: Sequence[str]) -> list[str]:
    """The label in every template (``str.replace``, so braces in a label are text, never a format field)."""
    return [template.replace("{}", class_text(label)) for template in templates]


def ensemble(prompt_embeddings: np.ndarray) -> np.ndarray:
    """One class embedding from its prompts' unit embeddings ``(t, d)``: the renormalised mean."""
    mean = prompt_embeddings.mean(axis=0)
    return mean / np.linalg.norm(mean)


def class_embeddings(encoder, labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """``(k, d)`` unit class embeddings, one row per label in ``labels`` order."""
    templates = check_templates(templates)
    texts = [prompt for label in labels for prompt in prompts_for(label, templates)]
    embedded = encoder.encode_texts(texts).reshape(len(labels), len(templates), -1)
    return np.stack([ensemble(rows) for rows in embedded])


def zero_shot_logits(image_features: np.ndarray, classes: np.ndarray, *, scale: float, bias: float = 0.0) -> np.ndarray:
    """``(n, k)`` logits: ``scale * cos + bias`` (inputs are unit rows, so the dot product is the cosine)."""
    return scale * image_features @ classes.T + bias


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def label_probabilities(
    image_features: np.ndarray, classes: np.ndarray, *, scale: float, bias: float = 0.0
) -> np.ndarray:
    """``(n, k)`` label distributions (rows sum to 1) for either family; see the module docstring."""
    return softmax(zero_shot_logits(image_features, classes, scale=scale, bias=bias))
