"""The frozen program: one JSON file that apps replay, with or without DSPy.

An artifact holds everything needed to reproduce the optimized classifier and to audit it:

* ``format`` / ``format_version`` — what this file is;
* ``task`` — output kind, labels or fields, and the JSON schema of the answer;
* ``model`` — model id and revision; ``generation`` — decoding and prompt-framing settings;
* ``image_preprocessing`` — how images were downscaled and re-encoded (apps send the same bytes);
* ``program`` — the DSPy program state (instruction, demos with their images as data URIs);
* ``prompt`` — the *rendered portable prompt*: the exact chat messages the adapter sends, demo
  images inline, the query image as the ``{image}`` slot, and the ``response_format``;
* ``decision`` — null, or what turns the measured label distribution into an answer: the
  calibrated decision ReAnchor fitted on val, per-label weights applied as
  ``argmax_k weights[k] * P(k)`` (format 2); the abstention threshold chosen on val and the
  task's "none of these" label (format 3, written only when the artifact has one of them);
* ``adapter`` — only in a fine-tuned program's file (format 3, ``vlmopt finetune``): the LoRA
  adapter directory beside it and the sha256 of its files, checked on every load;
* ``metrics`` — val and test metrics with split sizes; ``provenance`` — versions, config and
  split fingerprints, optimizer settings, seed;
* ``sha256`` — over the canonical JSON of all of the above.

Loading verifies the hash, the format version, every section's type
(:class:`~vlmopt.artifact_schema.Artifact`) and (when given) the label set, and fails with a
clear :class:`ArtifactError` instead of half-loading. No pickle anywhere: it is plain JSON.

Example::

    path = save_artifact(program, cfg, labels, "runs/x/artifact.json", metrics=..., provenance=...)
    frozen = load_artifact(path, expected_labels=["cat", "dog"])
    frozen.program(image=dspy.Image("cat.jpg"))
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
import pydantic

from vlmopt._dspy_compat import structured_outputs_model
from vlmopt.artifact_schema import ADAPTER_FORMAT_VERSION, FORMAT, FORMAT_VERSION, READABLE_VERSIONS, Artifact
from vlmopt.config import TaskConfig, TaskSpec
from vlmopt.datasets.images import JPEG_QUALITY, serialized_image_url
from vlmopt.errors import VlmoptError
from vlmopt.programs import Classify, create_program
from vlmopt.programs.signatures import make_signature

IMAGE_SLOT = "{image}"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # peft's save_pretrained names
ADAPTER_CONFIG = "adapter_config.json"
_SLOT_URL = "data:image/png;base64,aW1hZ2Utc2xvdA=="  # a marker, replaced by IMAGE_SLOT


class ArtifactError(VlmoptError, ValueError):
    """The artifact cannot be trusted or used: tampered, truncated, wrong version, other labels."""


@dataclass
class FrozenProgram:
    """A loaded, verified artifact: the runnable program and its metadata."""

    program: Classify
    task: TaskSpec
    artifact: Artifact
    adapter_dir: Path | None = None  # the verified LoRA adapter the program runs on (format 3)

    @property
    def labels(self) -> list[str] | None:
        return self.artifact.task.labels

    @property
    def model_id(self) -> str:
        return self.artifact.model.id


def check_backend(frozen: FrozenProgram, cfg: TaskConfig) -> None:
    """Refuse, before any call, a backend that cannot serve the artifact's calibrated or abstaining decision."""
    program = frozen.program
    what = [name for name, on in (("calibrated (ReAnchor weights)", program.label_weights),
                                  ("thresholded (it abstains below a confidence)", program.abstention)) if on]
    if not what:
        return
    missing = [need for need, met in {
        "task.structured_generation: true": cfg.task.structured_generation,
        "backend.label_probabilities: true": cfg.backend.kind != "openai" or cfg.backend.label_probabilities,
    }.items() if not met]
    if missing:
        raise ArtifactError(
            f"this artifact's label decision is {' and '.join(what)}: it decides on the label "
            f"probabilities the backend measures, so set {' and '.join(missing)} in the config"
        )


def config_for_artifact(cfg: TaskConfig, frozen: FrozenProgram) -> TaskConfig:
    """``cfg`` set to run ``frozen`` on its LoRA adapter, if it has one (else ``cfg`` itself).

    In-process the engine merges the adapter (``model.adapter``); a server serves it under the
    adapter's name (``vlmopt serve MODEL --lora ARTIFACT``), unless the config names the model to ask.
    """
    if frozen.adapter_dir is None:
        return cfg
    if cfg.backend.kind == "openai":
        if cfg.backend.served_model_name is not None:
            return cfg
        backend = cfg.backend.model_copy(update={"served_model_name": frozen.artifact.adapter.name})
        return cfg.model_copy(update={"backend": backend})
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": str(frozen.adapter_dir)})})


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks (adapter weights can be hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verified_adapter_dir(path: Path, artifact: Artifact) -> Path | None:
    """The artifact's adapter directory, its files checked against the artifact's hashes."""
    if artifact.adapter is None:
        return None
    adapter = artifact.adapter
    directory = (path.parent / adapter.path).resolve()
    for name, expected in ((ADAPTER_WEIGHTS, adapter.sha256), (ADAPTER_CONFIG, adapter.config_sha256)):
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{path}: its LoRA adapter file {file} is missing; keep the adapter directory "
                                "beside the artifact (copy both together)")
        if file_sha256(file) != expected:
            raise ArtifactError(f"{path}: sha256 mismatch for the LoRA adapter file {file} — it was modified after "
                                "the artifact was written; restore it or rerun vlmopt finetune")
    return directory


def canonical_sha256(content: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, compact) of everything but the hash itself."""
    body = {k: v for k, v in content.items() if k != "sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def response_format(signature: type[dspy.Signature]) -> dict[str, Any]:
    """The OpenAI ``json_schema`` response_format DSPy's JSON adapters send for this signature."""
    model = structured_outputs_model(signature)
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": True},
    }


def render_prompt(program: Classify, structured: bool) -> dict[str, Any]:
    """The chat messages the program's adapter sends, with the query image as ``{image}``."""
    signature = program.signature
    messages = program.adapter.format(signature, program.predictor.demos, {"image": dspy.Image(_SLOT_URL)})
    text = json.dumps(messages, ensure_ascii=False).replace(_SLOT_URL, IMAGE_SLOT)
    prompt: dict[str, Any] = {"messages": json.loads(text), "image_slot": IMAGE_SLOT}
    prompt["response_format"] = response_format(signature) if structured else None
    return prompt


def decision_section(program: Classify, task: TaskSpec) -> dict[str, Any] | None:
    """The label decision (weights, abstention, "other" label), for the program and for apps that replay it."""
    decision: dict[str, Any] = {}
    if program.label_weights:
        decision.update(
            weights=dict(program.label_weights),
            rule="label = argmax over labels k of weights[k] * P(k), P = the label distribution the backend "
                 "measures (per-label answer likelihood); ties go to the unweighted argmax",
            fitted_by="dspy.experimental.ReAnchor on the val split",
        )
    if program.abstention:
        decision["abstain"] = dict(program.abstention)
    if task.other_label:
        decision["other_label"] = task.other_label
    return decision or None


def format_version(decision: dict[str, Any] | None) -> int:
    """The oldest format that holds this decision, so older readers load every artifact they can."""
    if not decision:
        return 1
    return FORMAT_VERSION if {"abstain", "other_label"} & set(decision) else 2


def task_section(task: TaskSpec, labels: list[str] | None) -> dict[str, Any]:
    signature = make_signature(task, labels)
    return {
        "output": task.output,
        "labels": labels if task.output != "multi_field" else None,
        "fields": task.fields,
        "schema": response_format(signature)["json_schema"]["schema"],
    }


def build_artifact(
    program: Classify,
    cfg: TaskConfig,
    labels: list[str] | None,
    *,
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    adapter: dict[str, Any] | None = None,
) -> Artifact:
    """The artifact (hash included) for an optimized program (``adapter``: a fine-tuned one's LoRA section)."""
    decision = decision_section(program, cfg.task)
    content = {
        "format": FORMAT,
        "format_version": max(format_version(decision), ADAPTER_FORMAT_VERSION if adapter else 1),
        "task": task_section(cfg.task, labels),
        "model": {"id": cfg.model.id, "revision": cfg.model.revision},
        "generation": {
            "max_new_tokens": cfg.model.max_new_tokens,
            "temperature": cfg.model.temperature,
            "structured_generation": cfg.task.structured_generation,
            "adapter": cfg.task.adapter,
            "reasoning": cfg.task.reasoning,
            "normalize_labels": cfg.task.normalize_labels,
        },
        # Apps must send the bytes the program saw: images are downscaled and re-encoded once.
        "image_preprocessing": {
            "max_side": cfg.dataset.max_image_side,
            "demo_max_side": cfg.optimizer.demo_max_image_side,
            "format": "JPEG",
            "quality": JPEG_QUALITY,
            "exif_transpose": True,
            "alpha_flattened_on": "white",
        },
        "program": program.dump_state(),
        "prompt": render_prompt(program, cfg.task.structured_generation),
        "decision": decision,
        "metrics": metrics,
        "provenance": provenance,
        **({"adapter": adapter} if adapter else {}),  # absent from other files, which hash as before
    }
    # hashed as written: the typed model's JSON (pydantic may normalise, e.g. an int weight to a float)
    typed = Artifact.model_validate({**content, "sha256": ""}).content()
    return Artifact.model_validate({**typed, "sha256": canonical_sha256(typed)})


def save_artifact(program: Classify, cfg: TaskConfig, labels: list[str] | None, path: str | Path, **meta) -> Path:
    """Write the artifact JSON for ``program`` to ``path``."""
    path = Path(path)
    content = build_artifact(program, cfg, labels, **meta).content()
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def read_verified(path: str | Path) -> Artifact:
    """Parse and verify an artifact file; any doubt is an :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a complete JSON artifact (truncated or corrupt): {exc}") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a vlmopt artifact (format {content.get('format')!r})")
    version = content.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{path}: artifact format version {version!r} is not supported by this vlmopt "
            f"(supports {', '.join(map(str, READABLE_VERSIONS))}); re-export it with a matching vlmopt version"
        )
    expected = content.get("sha256")
    if expected != canonical_sha256(content):
        raise ArtifactError(f"{path}: sha256 mismatch — the artifact was modified after it was written")
    try:
        return Artifact.model_validate_json(text)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ArtifactError(f"{path}: section {where!r} is not what a vlmopt artifact holds: {first['msg']}") from None


def _restore_images(state: dict[str, Any]) -> dict[str, Any]:
    """DSPy 3.4 saves demo images as marker strings and loads them back as ``str``: rebuild ``dspy.Image``."""
    state = copy.deepcopy(state)
    for predictor_state in state.values():
        for demo in predictor_state.get("demos", []):
            value = demo.get("image")
            url = serialized_image_url(value) if isinstance(value, str) else None
            if url is not None:
                demo["image"] = url
    return state


def load_artifact(path: str | Path, *, expected_labels: list[str] | None = None) -> FrozenProgram:
    """Verify and load an artifact into a runnable program; never returns a half-loaded one."""
    artifact = read_verified(path)
    adapter_dir = verified_adapter_dir(Path(path), artifact)
    gen = artifact.generation
    labels = artifact.task.labels
    if expected_labels is not None and labels is not None and list(expected_labels) != list(labels):
        raise ArtifactError(
            f"{path}: the artifact classifies into {labels}, but the config's labels are {list(expected_labels)}"
        )
    decision = artifact.decision
    other_label = decision.other_label if decision is not None else None
    if other_label is not None and other_label not in (labels or []):
        raise ArtifactError(f"{path}: the decision's other_label {other_label!r} is not one of the task's {labels}")
    task = TaskSpec(
        output=artifact.task.output,
        labels=labels,
        fields=artifact.task.fields,
        reasoning=gen.reasoning,
        structured_generation=gen.structured_generation,
        adapter=gen.adapter,
        normalize_labels=gen.normalize_labels,
        other_label=other_label,
    )
    program = create_program(task, labels)
    if decision is not None and decision.weights is not None:
        if labels is None or not set(decision.weights) <= set(labels):
            raise ArtifactError(f"{path}: the decision weights name labels outside the task's {labels}")
        program.label_weights = dict(decision.weights)
    if decision is not None and decision.abstain is not None:
        program.abstention = decision.abstain.model_dump(mode="json")
    state = _restore_images(artifact.program)
    program.load_state(state)
    for demo_list in (p.demos for p in program.predictors()):
        for i, demo in enumerate(demo_list):
            demo_list[i] = dspy.Example(**{**demo, "image": dspy.Image(demo["image"])}).with_inputs("image")
    return FrozenProgram(program=program, task=task, artifact=artifact, adapter_dir=adapter_dir)
