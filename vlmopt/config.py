"""Task configuration: one YAML file describes model, backend, dataset, task, optimizer and run.

Tasks are data (as in lm-evaluation-harness): a YAML file checked by typed pydantic models.
Two shapes load:

* the **native** shape, with one section per concern (``model``, ``backend``, ``dataset``,
  ``task``, ``optimizer``, ``run``) — see ``configs/cats_vs_dogs.yaml``;
* the **flat** shape people already use (``model: "LiquidAI/LFM2-VL-450M"``, ``dataset: ...``,
  ``label_mapping``, ``system_prompt`` at the top level) — see ``configs/cats_vs_dogs_v0.yaml``.
  It is rewritten into the native shape before validation, so both give the same ``TaskConfig``.

Errors are written for the person editing the file: an unknown key names the key, the file and
the closest valid key; a wrong type names the field and what was expected.

Example::

    cfg = load_config("configs/cats_vs_dogs.yaml")
    cfg.task.labels            # ['cat', 'dog']
    cfg.model_dump_yaml()      # the resolved config, defaults filled in
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vlmopt.errors import VlmoptError


class ConfigError(VlmoptError, ValueError):
    """A task config that cannot be used; the message says what to change and where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """Which VLM answers, and how it generates."""

    id: str = Field("LiquidAI/LFM2-VL-450M", description="Hub id or a local model directory.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    adapter: str | None = Field(
        None, description="In-process: a LoRA adapter directory (peft save_pretrained, from vlmopt finetune) "
        "merged into the model's weights; a fine-tuned artifact sets it.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_new_tokens: int = Field(64, ge=1, description="Upper bound on generated tokens per answer.")
    temperature: float = Field(0.0, ge=0.0, description="0 is greedy decoding.")


class BackendConfig(_Section):
    """Where the model runs: in-process transformers, or an OpenAI-compatible server (vLLM)."""

    kind: Literal["transformers", "openai"] = "transformers"
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://host:8000/v1.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable that holds the API key (never the key)."
    )
    served_model_name: str | None = Field(None, description="Model name on the server; default model.id.")
    label_probabilities: bool = Field(
        True,
        description="openai backend: measure each label's probability (one 1-token request per node of "
        "the labels' token trie, reading vLLM's prefix cache: bench P10); off leaves the server's "
        "confidence unmeasured.",
    )
    timeout_s: float = Field(120.0, gt=0)
    num_retries: int = Field(2, ge=0)
    max_batch_size: int = Field(8, ge=1, description="In-process micro-batch size.")
    max_wait_ms: float = Field(10.0, ge=0, description="How long the in-process engine gathers a batch.")
    prefix_cache_mb: int = Field(
        1024, ge=0, description="In-process: MiB of model cache kept for programs' shared prompt prefixes "
        "(system, instruction, demos run once per program); 0 runs every prompt whole.",
    )

    @model_validator(mode="after")
    def _openai_needs_url(self) -> BackendConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("backend.kind 'openai' needs backend.base_url (e.g. http://localhost:8000/v1)")
        return self


class SplitFractions(_Section):
    """Fractions of the labelled data for the demo pool, the optimizer's target, the final report."""

    train: float = Field(0.2, gt=0, lt=1)
    val: float = Field(0.4, gt=0, lt=1)
    test: float = Field(0.4, gt=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"dataset.splits must sum to 1 (train + val + test = {total:g})")
        return self


class DatasetConfig(_Section):
    """Where the labelled images come from and how they are prepared."""

    source: str = Field(..., description="Hub id, image folder, manifest (.csv/.jsonl/.parquet) or save_to_disk dir.")
    kind: Literal["auto", "hub", "imagefolder", "manifest", "saved"] = "auto"
    split: str = Field("train", description="Which split of the source to read.")
    revision: str | None = None
    n_samples: int | None = Field(None, ge=1, description="Seeded, label-stratified sample of this many items.")
    image_column: str | None = Field(None, description="Default: the column with an Image feature.")
    label_column: str | None = Field(None, description="Default: the ClassLabel column, else the one string column.")
    id_column: str | None = Field(None, description="Default: the row index (or the file path).")
    label_mapping: dict[int | str, str] | None = Field(
        None, description="Raw label value -> class name; overrides detected class names."
    )
    splits: SplitFractions = Field(default_factory=SplitFractions)
    max_image_side: int = Field(768, ge=16, description="Longer image side after normalisation (aspect kept).")
    max_image_pixels: int | None = Field(
        None, ge=1, description="Decompression-bomb guard: larger images are skipped (default PIL's, ~89 Mpx)."
    )


OutputKind = Literal["single_label", "multi_label", "multi_field"]


class TaskSpec(_Section):
    """What the classifier answers and the hand-written prompt it starts from."""

    output: OutputKind = "single_label"
    labels: list[str] | None = Field(None, description="Class names; default: from label_mapping or the dataset.")
    fields: dict[str, list[str]] | None = Field(
        None, description="multi_field only: field name -> its closed set of values."
    )
    reasoning: bool = Field(False, description="Let the model write its reasoning before the answer.")
    structured_generation: bool = Field(True, description="Constrain decoding to the output schema.")
    adapter: Literal["compact", "dspy"] = Field(
        "compact",
        description="Prompt framing: 'compact' (instruction, demos, image; best for small VLMs) or "
        "'dspy' (DSPy's JSONAdapter when structured, else ChatAdapter).",
    )
    normalize_labels: bool = Field(
        False, description="Free-text answers: match labels ignoring case, punctuation and a plural 's'."
    )
    other_label: str | None = Field(
        None, description="single_label: a label for 'none of these' (e.g. adopted), added to the labels; "
        "scored like any label, reported apart from abstentions.",
    )
    system_prompt: str | None = None
    user_prompt: str | None = None

    @model_validator(mode="after")
    def _other_label_is_a_label(self) -> TaskSpec:
        if self.other_label is None:
            return self
        if self.output != "single_label":
            raise ValueError(f"task.other_label is for output 'single_label' (output is {self.output!r})")
        if not self.other_label.strip():
            raise ValueError("task.other_label is empty")
        if self.labels is not None and self.other_label not in self.labels:
            self.labels = with_other_label(self.labels, self.other_label)
        return self

    @model_validator(mode="after")
    def _closed_sets(self) -> TaskSpec:
        if self.output == "multi_field":
            if not self.fields:
                raise ValueError("task.output 'multi_field' needs task.fields (name -> list of values)")
            for name, values in self.fields.items():
                _check_label_list(values, f"task.fields.{name}")
        elif self.fields:
            raise ValueError(f"task.fields is only for output 'multi_field' (output is {self.output!r})")
        if self.labels is not None:
            _check_label_list(self.labels, "task.labels")
        return self


def with_other_label(labels: list[str], other_label: str | None) -> list[str]:
    """The closed label set with the "none of these" label last (once)."""
    return [*labels, other_label] if other_label is not None and other_label not in labels else list(labels)


def _check_label_list(values: list[str], where: str) -> None:
    if not values:
        raise ValueError(f"{where} is empty")
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{where} repeats {dupes}")


SearchMethod = Literal["mipro", "gepa", "simba", "random_search"]
SEARCH_METHODS: tuple[str, ...] = ("mipro", "gepa", "simba", "random_search")
"""DSPy's MIPROv2, GEPA, SIMBA and BootstrapFewShotWithRandomSearch (``optimizers/methods``)."""


class AbstainConfig(_Section):
    """When to abstain: a threshold on the measured confidence, chosen on val for exactly one goal."""

    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="Answer as many val images as possible at this accuracy on the answered.",
    )
    coverage: float | None = Field(None, gt=0, le=1, description="Answer this share of val images, the most sure.")
    confidence: Literal["auto", "max_prob", "margin"] = Field(
        "auto", description="max_prob: P(top label); margin: P(top1) - P(top2); auto: whichever meets the goal "
        "better on val.",
    )

    @model_validator(mode="after")
    def _one_goal(self) -> AbstainConfig:
        if (self.target_accuracy is None) == (self.coverage is None):
            raise ValueError("optimizer.abstain needs exactly one goal: target_accuracy (e.g. 0.99) or coverage "
                             "(e.g. 0.9)")
        return self


class OptimizerConfig(_Section):
    """The search (MIPROv2, GEPA, SIMBA or random search; the outer Optuna study); optimize reads these."""

    method: SearchMethod = Field("mipro", description="Which DSPy optimizer searches the prompt on train/val.")
    budget_calls: int | None = Field(
        None, ge=1, description="Task-model calls the search may ask for, one unit for every method (MIPROv2 "
        "trials x minibatch, GEPA max_metric_calls, SIMBA steps x batch, random search candidates x val); "
        "unset: each method's own default budget.",
    )
    auto: Literal["light", "medium", "heavy"] | None = "light"
    num_candidates: int | None = Field(None, ge=1)
    num_trials: int | None = Field(None, ge=1)
    max_bootstrapped_demos: int = Field(2, ge=0)
    max_labeled_demos: int = Field(2, ge=0)
    minibatch: bool = True
    minibatch_size: int = Field(25, ge=1)
    prompt_model: str | None = Field(
        None, description="The writing model every method that writes prompts uses (MIPROv2's proposer, GEPA's "
        "reflection, SIMBA's rules): a LiteLLM id, an OpenAI-compatible URL (http://host:8000/v1, '#<model>' "
        "to pick one of several served), a local model dir, or 'none'; default: the task model.",
    )
    demo_max_image_side: int = Field(384, ge=16, description="Demo images are downscaled to this side.")
    instructions: list[str] = Field(default_factory=list, description="Candidate instructions to search.")
    compare: list[Literal["labeled_fewshot", "bootstrap_fewshot", SearchMethod]] = Field(
        default_factory=list, description="Search methods to run on the same splits (the best on val is the "
        "artifact), and simpler DSPy optimizers to report beside them on test.",
    )
    search_methods: list[SearchMethod] = Field(
        default_factory=list, description="Methods the outer study chooses among (default: optimizer.method only)."
    )
    search_trials: int = Field(0, ge=0, description="Outer Optuna trials over program choices (0 = off).")
    search_objectives: list[Literal["accuracy", "tokens", "latency"]] = Field(
        default_factory=lambda: ["accuracy"],
        description="Outer search objectives: val accuracy, optionally with tokens / latency per image (Pareto).",
    )
    storage: str | None = Field(None, description="Optuna RDB URL; default SQLite in the run directory.")
    calibrate: bool = Field(
        False,
        description="After the search, fit per-label decision weights on val with DSPy's ReAnchor over the "
        "measured label probabilities; kept only when they win.",
    )
    abstain: AbstainConfig | None = Field(
        None, description="After the search (and calibration), choose an abstention threshold on val.",
    )

    @field_validator("storage")
    @classmethod
    def _storage_is_a_database_url(cls, url: str | None) -> str | None:
        """A bad URL is refused here, not after the baseline has run and the study opens."""
        if url is not None:
            from sqlalchemy.engine import make_url
            from sqlalchemy.exc import ArgumentError

            try:
                make_url(url).get_dialect()
            except ArgumentError as exc:
                raise ValueError(
                    f"not a database URL SQLAlchemy can open ({exc}); e.g. sqlite:///study.db or "
                    "postgresql+psycopg://user@host/db"
                ) from None
        return url


class RunConfig(_Section):
    """Where results go and how much runs at once."""

    output_dir: str = "runs"
    num_threads: int = Field(4, ge=1)
    cache_dir: str = Field(".vlmopt_cache", description="DSPy disk cache (replays finished calls on rerun).")
    mlflow_tracking_uri: str | None = Field(
        None, description="Log each optimize run and its trials to MLflow here (e.g. sqlite:///mlflow.db)."
    )
    mlflow_experiment: str | None = Field(None, description="MLflow experiment name; default: the run name.")


class TaskConfig(_Section):
    """A whole task. ``load_config`` builds one from YAML; library code can build one directly."""

    name: str | None = Field(None, description="Run name; default: the config file's stem.")
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    backend: BackendConfig = Field(default_factory=BackendConfig)
    dataset: DatasetConfig
    task: TaskSpec = Field(default_factory=TaskSpec)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _labels_agree(self) -> TaskConfig:
        mapping = self.dataset.label_mapping
        if mapping and self.task.output != "multi_field":
            mapped = list(dict.fromkeys(mapping.values()))
            if self.task.labels is None:
                self.task.labels = mapped
            else:
                unknown = [v for v in mapped if v not in self.task.labels]
                if unknown:
                    raise ValueError(
                        f"dataset.label_mapping maps to {unknown}, which task.labels {self.task.labels} lacks"
                    )
        return self

    @model_validator(mode="after")
    def _decision_is_measurable(self) -> TaskConfig:
        """Calibration and abstention decide on measured label probabilities; say what that needs."""
        wants = [key for key, on in (("optimizer.calibrate", self.optimizer.calibrate),
                                     ("optimizer.abstain", self.optimizer.abstain is not None)) if on]
        if not wants:
            return self
        needs = {
            "task.output: single_label": self.task.output == "single_label",
            "task.structured_generation: true": self.task.structured_generation,
            "task.reasoning: false": not self.task.reasoning,
            "backend.label_probabilities: true": self.backend.label_probabilities,
        }
        missing = [need for need, met in needs.items() if not met]
        if missing:
            raise ValueError(
                f"{' and '.join(wants)}: decisions on measured label probabilities need "
                f"{', '.join(missing)} (or remove {' and '.join(wants)})"
            )
        return self

    def model_dump_yaml(self) -> str:
        """The resolved config (defaults filled in) as YAML, the form `vlmopt config show` prints."""
        return yaml.dump(self.model_dump(), Dumper=_BlockDumper, sort_keys=False, allow_unicode=True)


class _BlockDumper(yaml.SafeDumper):
    """Safe YAML dumper that writes multi-line prompts as ``|`` blocks, as people write them."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str_representer)


# The flat (v0) shape: top-level key -> (section, key) in the native shape.
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "model": ("model", "id"),
    "revision": ("model", "revision"),
    "max_new_tokens": ("model", "max_new_tokens"),
    "dataset": ("dataset", "source"),
    "n_samples": ("dataset", "n_samples"),
    "split": ("dataset", "split"),
    "image_column": ("dataset", "image_column"),
    "label_column": ("dataset", "label_column"),
    "label_mapping": ("dataset", "label_mapping"),
    "structured_generation": ("task", "structured_generation"),
    "system_prompt": ("task", "system_prompt"),
    "user_prompt": ("task", "user_prompt"),
}
_TOP_LEVEL = ("name", "seed")


def is_flat(raw: dict[str, Any]) -> bool:
    """The flat shape names the model by a string; the native shape has a ``model:`` section."""
    return isinstance(raw.get("model"), str) or any(
        key in raw for key in FLAT_KEYS if key not in TaskConfig.model_fields
    )


def flat_to_native(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Rewrite the flat shape into the native one; unknown flat keys are named like native ones."""
    native: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _TOP_LEVEL:
            native[key] = value
        elif key in FLAT_KEYS:
            section, field = FLAT_KEYS[key]
            native.setdefault(section, {})[field] = value
        else:
            raise ConfigError(_unknown_key_message(key, [*FLAT_KEYS, *_TOP_LEVEL], source))
    return native


def _unknown_key_message(key: str, valid: list[str], source: str, section: str = "") -> str:
    where = f"{section}.{key}" if section else key
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{source}: unknown key '{where}'{hint} Valid keys{' in ' + section if section else ''}: {', '.join(valid)}"


def _section_model(loc: tuple[Any, ...]) -> type[BaseModel]:
    """The pydantic model that owns the field at ``loc`` (to list its valid keys)."""
    model: type[BaseModel] = TaskConfig
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model


def _explain(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int) or e["type"] != "extra_forbidden")
        dotted = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            section = ".".join(str(p) for p in loc[:-1])
            valid = list(_section_model(loc).model_fields)
            lines.append(_unknown_key_message(str(loc[-1]), valid, source, section))
        elif e["type"] == "missing":
            lines.append(f"{source}: missing required key '{dotted}'")
        else:
            got = e.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            field = f"'{dotted}': " if dotted else ""
            lines.append(f"{source}: {field}{e['msg']}{got_text}")
    return "\n".join(lines)


def parse_config(raw: Any, source: str = "<config>") -> TaskConfig:
    """Validate an already-parsed mapping (either shape) into a ``TaskConfig``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a task config is a YAML mapping, got {type(raw).__name__}")
    native = flat_to_native(raw, source) if is_flat(raw) else raw
    try:
        return TaskConfig.model_validate(native)
    except ValidationError as err:
        raise ConfigError(_explain(err, source)) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and where, on one line (its own text spans several, with a caret drawing)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return " ".join(str(exc).split())
    return problem if mark is None else f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def load_config(path: str | Path) -> TaskConfig:
    """Read a task YAML (``yaml.safe_load`` only) and validate it; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML for a task config: {_yaml_problem(exc)}") from None
    cfg = parse_config(raw, str(path))
    if cfg.name is None:
        cfg = cfg.model_copy(update={"name": path.stem})
    return cfg
