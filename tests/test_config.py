"""Task config: both YAML shapes, defaults, and every error path a user can hit."""

from pathlib import Path

import pytest
import yaml

from vlmopt.config import ConfigError, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def write(tmp_path: Path, text: str, name: str = "task.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_flat_v0_config_loads_unchanged_and_equals_native():
    flat = load_config(CONFIGS / "cats_vs_dogs_v0.yaml")
    native = load_config(CONFIGS / "cats_vs_dogs.yaml")
    assert flat.model_dump(exclude={"name"}) == native.model_dump(exclude={"name"})
    assert flat.seed == 23
    assert flat.model.id == "LiquidAI/LFM2-VL-450M"
    assert flat.task.structured_generation is False
    assert flat.dataset.source == "microsoft/cats_vs_dogs"
    assert flat.dataset.n_samples == 100
    assert flat.dataset.label_mapping == {0: "cat", 1: "dog"}
    assert flat.task.labels == ["cat", "dog"]
    assert "veterinarian" in flat.task.system_prompt
    assert "- cat\n- dog" in flat.task.user_prompt


def test_v0_file_has_exactly_the_documented_keys():
    raw = yaml.safe_load((CONFIGS / "cats_vs_dogs_v0.yaml").read_text())
    assert list(raw) == [
        "seed", "model", "structured_generation", "dataset", "n_samples", "split",
        "image_column", "label_column", "label_mapping", "system_prompt", "user_prompt",
    ]


@pytest.mark.parametrize("name", ["mars_landforms.yaml", "person_attributes.yaml"])
def test_shipped_native_examples_load(name):
    cfg = load_config(CONFIGS / name)
    if cfg.task.output == "multi_field":
        assert set(cfg.task.fields) == {"age_group", "gender", "activity"}
    else:
        assert len(cfg.task.labels) == 15


def test_name_defaults_to_file_stem(tmp_path):
    cfg = load_config(write(tmp_path, "dataset: {source: some/folder}\n", "my_task.yaml"))
    assert cfg.name == "my_task"
    assert cfg.dataset.splits.train == pytest.approx(0.2)
    assert cfg.backend.kind == "transformers"


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "cats_vs_dogs_v0.yaml")
    again = parse_config(yaml.safe_load(cfg.model_dump_yaml()))
    assert again == cfg


def test_unknown_native_key_names_key_file_and_closest(tmp_path):
    path = write(tmp_path, "dataset: {source: x, n_sample: 3}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "dataset.n_sample" in msg and "did you mean 'n_samples'" in msg


def test_unknown_top_level_key_in_flat_shape(tmp_path):
    path = write(tmp_path, 'model: "m"\ndataset: "d"\nsystem_promt: "hi"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'system_promt'; did you mean 'system_prompt'"):
        load_config(path)


def test_wrong_type_names_field_and_expectation(tmp_path):
    path = write(tmp_path, "dataset: {source: x, n_samples: many}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "'dataset.n_samples'" in str(err.value) and "integer" in str(err.value)
    assert "'many'" in str(err.value)


def test_wrong_literal_lists_allowed_values(tmp_path):
    path = write(tmp_path, "dataset: {source: x}\nbackend: {kind: grpc}\n")
    with pytest.raises(ConfigError, match=r"'backend.kind'.*'transformers' or 'openai'"):
        load_config(path)


def test_missing_required_section(tmp_path):
    with pytest.raises(ConfigError, match="missing required key 'dataset'"):
        load_config(write(tmp_path, "seed: 1\n"))


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("/nonexistent/task.yaml")


def test_yaml_object_tag_is_refused(tmp_path):
    path = write(tmp_path, "dataset: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="a task config is a YAML mapping, got list"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_label_mapping_must_agree_with_labels(tmp_path):
    path = write(tmp_path, "dataset: {source: x, label_mapping: {0: cat, 1: pug}}\ntask: {labels: [cat, dog]}\n")
    with pytest.raises(ConfigError, match=r"maps to \['pug'\]"):
        load_config(path)


def test_openai_backend_needs_base_url(tmp_path):
    with pytest.raises(ConfigError, match="needs backend.base_url"):
        load_config(write(tmp_path, "dataset: {source: x}\nbackend: {kind: openai}\n"))


def test_split_fractions_must_sum_to_one(tmp_path):
    path = write(tmp_path, "dataset: {source: x, splits: {train: 0.5, val: 0.5, test: 0.5}}\n")
    with pytest.raises(ConfigError, match="must sum to 1"):
        load_config(path)


def test_multi_field_needs_fields_and_closed_sets(tmp_path):
    with pytest.raises(ConfigError, match="needs task.fields"):
        load_config(write(tmp_path, "dataset: {source: x}\ntask: {output: multi_field}\n"))
    with pytest.raises(ConfigError, match=r"task.fields.age repeats \['old'\]"):
        load_config(write(tmp_path, "dataset: {source: x}\ntask: {output: multi_field, fields: {age: [old, old]}}\n"))


def test_prefix_cache_default_is_the_engine_default():
    """config.py imports no torch, so it states the engine's default budget again: the two must agree."""
    from vlmopt.config import BackendConfig
    from vlmopt.serving.prefix_cache import DEFAULT_BUDGET_MB

    assert BackendConfig().prefix_cache_mb == DEFAULT_BUDGET_MB
