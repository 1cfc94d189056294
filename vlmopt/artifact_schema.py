"""What an artifact file holds, typed: one pydantic model per section, checked on every load.

:mod:`vlmopt.artifacts` builds, hashes, verifies and loads the file; this module only says what
its content is, so readers get attributes (``artifact.model.revision``) instead of walking dicts,
and a file with a missing or mistyped section fails with the section's name. The DSPy program
state, metrics and provenance stay open mappings: their shapes belong to DSPy and to the run.

Example::

    artifact = Artifact.model_validate_json(path.read_text())
    artifact.task.labels, artifact.model.id, artifact.decision and artifact.decision.weights, artifact.adapter
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from vlmopt.config import OutputKind

FORMAT = "vlmopt.artifact"
FORMAT_VERSION = 3  # written when the ``decision`` abstains or has an "other" label; 2 calibrated only; 1 none
ADAPTER_FORMAT_VERSION = 3  # written when the program runs on a LoRA ``adapter``: older readers refuse it
READABLE_VERSIONS = (1, 2, 3)  # each is written only when needed, so older readers still load what they can


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSection(_Section):
    """The output kind, its labels or fields, and the JSON schema of the answer."""

    output: OutputKind
    labels: list[str] | None
    fields: dict[str, list[str]] | None
    answer_schema: dict[str, Any] = Field(alias="schema")


class ModelSection(_Section):
    id: str
    revision: str | None


class GenerationSection(_Section):
    """Decoding and prompt-framing settings the program was optimized under."""

    max_new_tokens: int
    temperature: float
    structured_generation: bool
    adapter: Literal["compact", "dspy"]
    reasoning: bool
    normalize_labels: bool


class ImagePreprocessing(_Section):
    """How images were downscaled and re-encoded: apps must send the bytes the program saw."""

    max_side: int
    demo_max_side: int
    format: Literal["JPEG"]
    quality: int
    exif_transpose: bool
    alpha_flattened_on: str


class PromptSection(_Section):
    """The rendered portable prompt: the adapter's chat messages with the query image as a slot."""

    messages: list[dict[str, Any]]
    image_slot: str
    response_format: dict[str, Any] | None


class AbstentionSection(_Section):
    """When the program abstains (format 3): ``confidence < threshold``, chosen on val for ``goal``."""

    threshold: float
    confidence: Literal["max_prob", "margin"]
    rule: str
    goal: dict[Literal["target_accuracy", "coverage"], float]
    chosen_on: Literal["val"]
    val: dict[str, Any]  # what the threshold gave on val: n, n_answered, coverage, accuracy (on answered), met


class DecisionSection(_Section):
    """What turns the measured label distribution into an answer.

    Format 2 holds the calibrated decision only (``weights``, ``rule``, ``fitted_by``:
    ``argmax_k weights[k] * P(k)``); format 3 may add ``abstain`` and the task's ``other_label``
    (the closed-set "none of these" label, one of ``task.labels``), with or without weights.
    """

    weights: dict[str, float] | None = None
    rule: str | None = None
    fitted_by: str | None = None
    abstain: AbstentionSection | None = None
    other_label: str | None = None


class AdapterSection(_Section):
    """A LoRA adapter (format 3) the program runs on, applied on the base model of ``model``.

    ``path`` is the adapter directory (peft ``save_pretrained``) relative to the artifact file; the
    hashes pin its two files, so a changed adapter is refused on load like a changed artifact.
    ``name`` is what vLLM serves it as (``--lora-modules name=path``).
    """

    kind: Literal["lora"]
    path: str
    name: str
    sha256: str  # adapter_model.safetensors
    config_sha256: str  # adapter_config.json (rank, alpha, target modules)
    base_fingerprint: str  # the base weights trained on: hub commit or local directory hash
    rank: int


class Artifact(_Section):
    """The whole file; ``sha256`` is over the canonical JSON of everything else."""

    format: Literal["vlmopt.artifact"]
    format_version: Literal[1, 2, 3]
    task: TaskSection
    model: ModelSection
    generation: GenerationSection
    image_preprocessing: ImagePreprocessing | None = None  # absent from the first format-1 files
    program: dict[str, Any]
    prompt: PromptSection
    decision: DecisionSection | None = None  # format 1: absent or null (the plain argmax)
    adapter: AdapterSection | None = None  # formats 1-2: absent (the base weights)
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    sha256: str

    def content(self) -> dict[str, Any]:
        """The JSON content as written (schema keys by their file names), the hash's input included.

        Optional sections a file left out stay out, so an old file's hash still verifies.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)
