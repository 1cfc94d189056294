"""One prediction per image: the row the evaluate command writes and every metric reads.

The same record shape serves all three output kinds, so the run writer, the metrics and the
HTML report share one contract. ``gold`` / ``predicted`` take the shape of the task output:

- ``single_label``: ``"cat"``
- ``multi_label``: ``["cat", "indoor"]`` (order and duplicates carry no meaning)
- ``multi_field``: ``{"make": "audi", "year": "2012"}``

A program with an abstention threshold marks the images it is not sure of ``abstained=True``,
keeping its top label in ``predicted`` (a suggestion for whoever reviews it).

An output the model got wrong in *form* (unparseable, a label outside the class set) is
``valid=False`` with ``predicted=None`` and its text kept in ``raw``: it is counted as invalid
and as wrong, never mapped to a nearby label.

Example::

    rec = PredictionRecord(id="img_001", gold="cat", predicted="dog", raw='{"label": "dog"}',
                           valid=True, latency_s=0.21)
    line = rec.to_json()                      # one JSONL row
    assert PredictionRecord.from_json(line) == rec
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

Answer = str | list[str] | dict[str, str]
"""The value of one task output: a label, a set of labels, or field -> value."""


class PredictionRecord(BaseModel):
    """What the classifier said about one image, and what it cost."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    gold: Answer
    predicted: Answer | None = Field(description="None exactly when the output was invalid.")
    raw: str = Field("", description="The model's text as generated, for audit of invalid outputs.")
    valid: bool
    confidence: float | None = Field(None, ge=0.0, le=1.0, description="Probability of the answer given.")
    probabilities: dict[str, float] | None = Field(None, description="Label -> probability, where known.")
    latency_s: float = Field(0.0, ge=0.0)
    prompt_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)
    label_normalized: bool = Field(False, description="Opt-in normalisation was needed to match a label.")
    abstained: bool = Field(
        False, description="The program's confidence fell below its abstention threshold; predicted is its top label."
    )
    image_ref: str | None = Field(None, description="Where the image came from (path or source row).")
    thumbnail: str | None = Field(None, description="A small JPEG data URI, so reports need no image files.")

    @model_validator(mode="after")
    def _predicted_matches_valid(self) -> PredictionRecord:
        # A valid record without an answer, or an invalid one carrying an answer, would make
        # the invalid count and the confusion matrix disagree; refuse it at the source.
        if self.valid and self.predicted is None:
            raise ValueError(f"record {self.id!r}: valid=True needs a predicted value")
        if not self.valid and self.predicted is not None:
            raise ValueError(f"record {self.id!r}: valid=False must have predicted=None (keep the text in raw)")
        if self.abstained and not self.valid:
            raise ValueError(f"record {self.id!r}: an invalid answer is not an abstention (it has no confidence)")
        return self

    def to_json(self) -> str:
        """One line of JSON (no newline inside), the row format of ``predictions.jsonl``."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> PredictionRecord:
        """Parse a row written by :meth:`to_json`; a malformed row raises ``pydantic.ValidationError``."""
        return cls.model_validate_json(text)
