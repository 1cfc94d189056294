"""Matching free-text answers to the closed label set, without silent mapping.

By default an answer is valid only if it *is* a label (surrounding whitespace aside): the model
that answers "pug" in a cats-vs-dogs task gets an invalid, not a "dog". Normalisation (case,
punctuation, a plural "s") is opt-in (``task.normalize_labels``) and every use of it is reported
on the prediction, so its effect on accuracy can be measured separately.
"""

from __future__ import annotations

import string

_PUNCT = str.maketrans("", "", string.punctuation)


def _normal_form(text: str) -> str:
    text = " ".join(text.lower().translate(_PUNCT).split())
    return text[:-1] if text.endswith("s") and len(text) > 1 else text


def match_label(text: str, labels: list[str], *, normalize: bool = False) -> tuple[str | None, bool]:
    """Return ``(label, normalized)``: the label the text names, and whether normalisation was needed.

    ``(None, False)`` means the answer is not a label (an invalid output).
    """
    answer = text.strip()
    if answer in labels:
        return answer, False
    if normalize:
        wanted = _normal_form(answer)
        hits = [label for label in labels if _normal_form(label) == wanted]
        if len(hits) == 1:
            return hits[0], True
    return None, False
