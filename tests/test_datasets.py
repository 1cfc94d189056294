"""load_splits: every source kind, detected columns, stratified seeded splits, skips and clear errors."""

import json
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import datasets
import dspy
import huggingface_hub
import pytest

from vlmopt.config import TaskConfig
from vlmopt.datasets import DatasetError, HubUnreachable, LoadedSplits, SplitError, load_splits
from vlmopt.datasets.images import dspy_image_to_pil
from vlmopt.datasets.sources import take_stream_pool
from vlmopt.testing.images import BAD_IMAGE_REASONS, CONVERTIBLE_KINDS, HUGE_PIXELS, SyntheticDataset

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")

MakeConfig = Callable[..., TaskConfig]
FRACTIONS = {"train": 0.2, "val": 0.4, "test": 0.4}
SOURCES = {
    "folder": ("imagefolder", "image", "label"),
    "manifest_csv": ("manifest", "image", "label"),
    "manifest_jsonl": ("manifest", "image", "label"),
    "manifest_parquet": ("manifest", "image", "label"),
    "saved": ("saved", "image", "label"),
}


def split_ids(data: LoadedSplits) -> dict[str, list[str]]:
    return {name: [ex.id for ex in getattr(data, name)] for name in FRACTIONS}


def true_label(data: SyntheticDataset, kind: str, item_id: str) -> str:
    """The class an id was written as: ids are paths for folders/manifests, row indices when saved."""
    if kind == "saved":
        return data.items[int(item_id)][1]
    return item_id.split("/")[-2]


def assert_stratified(data: LoadedSplits, fractions: dict[str, float] = FRACTIONS) -> None:
    per_class = Counter(ex.label for ex in data.all)
    for name, fraction in fractions.items():
        counts = Counter(ex.label for ex in getattr(data, name))
        for label, total in per_class.items():
            assert abs(counts[label] - total * fraction) < 1, (name, label, counts[label], total)
            assert counts[label] >= 1


@pytest.mark.parametrize("form", sorted(SOURCES))
def test_every_source_round_trips(synthetic_data: SyntheticDataset, task_config: MakeConfig, form: str) -> None:
    kind, image_column, label_column = SOURCES[form]
    data = load_splits(task_config(getattr(synthetic_data, form)))
    assert data.kind == kind
    assert (data.columns.image, data.columns.targets) == (image_column, (label_column,))
    assert data.labels == list(synthetic_data.classes)
    assert sum(data.sizes().values()) == len(synthetic_data.items) and not data.skipped
    ids = [ex.id for ex in data.all]
    assert len(set(ids)) == len(ids)
    for ex in data.all:
        assert isinstance(ex.image, dspy.Image) and set(ex.inputs().keys()) == {"image"}
        assert ex.label == true_label(synthetic_data, kind, ex.id)
    assert dspy_image_to_pil(data.train[0].image).size == (64, 64)
    assert_stratified(data)


def test_explicit_kind_matches_auto(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    auto = load_splits(task_config(synthetic_data.manifest_csv))
    explicit = load_splits(task_config(synthetic_data.manifest_csv, kind="manifest"))
    assert explicit.fingerprint == auto.fingerprint


def test_images_are_downscaled_to_max_side(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    data = load_splits(task_config(synthetic_data.saved, max_image_side=32))
    assert {dspy_image_to_pil(ex.image).size for ex in data.all} == {(32, 32)}


def test_same_seed_same_splits_other_seed_other_splits(
    synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    first = load_splits(task_config(synthetic_data.folder, seed=5))
    again = load_splits(task_config(synthetic_data.folder, seed=5))
    other = load_splits(task_config(synthetic_data.folder, seed=6))
    assert split_ids(first) == split_ids(again) and first.fingerprint == again.fingerprint
    assert split_ids(first) != split_ids(other) and first.fingerprint != other.fingerprint
    parts = [set(ids) for ids in split_ids(first).values()]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_configured_fractions_are_met_per_class(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    fractions = {"train": 0.5, "val": 0.3, "test": 0.2}
    data = load_splits(task_config(synthetic_data.manifest_parquet, splits=fractions))
    assert data.sizes() == {"train": 15, "val": 9, "test": 6}
    assert_stratified(data, fractions)


def test_n_samples_is_a_seeded_stratified_sample(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    data = load_splits(task_config(synthetic_data.saved, n_samples=15, seed=1))
    assert sum(data.sizes().values()) == 15
    assert Counter(ex.label for ex in data.all) == {"circle": 5, "square": 5, "triangle": 5}
    assert_stratified(data)
    assert split_ids(load_splits(task_config(synthetic_data.saved, n_samples=15, seed=1))) == split_ids(data)
    chosen = {ex.id for ex in data.all}
    assert chosen != {ex.id for ex in load_splits(task_config(synthetic_data.saved, n_samples=15, seed=2)).all}


def test_too_few_items_names_the_class_and_counts(
    tmp_path: Path, synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    rows = [{"image": str(synthetic_data.root / p), "label": lab} for p, lab in synthetic_data.items]
    rows = [r for r in rows if r["label"] != "square"] + [r for r in rows if r["label"] == "square"][:2]
    manifest = write_jsonl(tmp_path / "few.jsonl", rows)
    with pytest.raises(SplitError, match=r"class 'square' has 2 item\(s\).*train 0, val 1, test 1"):
        load_splits(task_config(manifest))


def test_a_listed_label_without_items_is_too_few(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    cfg = task_config(synthetic_data.folder, task={"labels": ["circle", "square", "triangle", "ring"]})
    with pytest.raises(SplitError, match=r"class 'ring' has 0 item"):
        load_splits(cfg)


def test_missing_column_names_it_and_the_available_ones(
    synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    with pytest.raises(DatasetError, match=r"label_column 'shape' not found; available columns: \['image', 'label'\]"):
        load_splits(task_config(synthetic_data.manifest_csv, label_column="shape"))


def test_ambiguous_label_column_asks_for_it(
    tmp_path: Path, synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    rows = [{"image": p, "label": lab, "note": "x"} for p, lab in synthetic_data.items]
    manifest = write_jsonl(synthetic_data.root / "two_strings.jsonl", rows)
    with pytest.raises(
        DatasetError, match=r"several candidate label columns \['label', 'note'\]; set dataset.label_column"
    ):
        load_splits(task_config(manifest))
    assert load_splits(task_config(manifest, label_column="label")).labels == list(synthetic_data.classes)


def test_label_mapping_renames_and_skips_unmapped_values(
    synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    data = load_splits(task_config(synthetic_data.saved, label_mapping={0: "round", 1: "boxy"}))
    assert data.labels == ["round", "boxy"]
    assert Counter(ex.label for ex in data.all) == {"round": 10, "boxy": 10}
    assert data.skip_counts() == {"label_not_in_mapping": 10}
    assert "label 2 (triangle) is not in dataset.label_mapping" in data.skipped[0].message


def test_label_mapping_by_string_value(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    mapping = {"circle": "round", "square": "angular", "triangle": "angular"}
    data = load_splits(task_config(synthetic_data.manifest_csv, label_mapping=mapping))
    assert data.labels == ["round", "angular"] and not data.skipped
    assert Counter(ex.label for ex in data.all) == {"round": 10, "angular": 20}


def test_task_labels_fix_the_class_order(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    order = ["triangle", "circle", "square"]
    assert load_splits(task_config(synthetic_data.folder, task={"labels": order})).labels == order


def test_bad_images_are_counted_skips(
    tmp_path: Path, synthetic_data: SyntheticDataset, bad_images: dict[str, Path], task_config: MakeConfig
) -> None:
    rows = [{"image": p, "label": lab} for p, lab in synthetic_data.items]
    kinds = sorted(bad_images)
    rows += [{"image": str(bad_images[k]), "label": "circle", "id": k} for k in kinds]
    for i, row in enumerate(rows):
        row.setdefault("id", f"good-{i}")
    manifest = write_jsonl(synthetic_data.root / "with_bad.jsonl", rows)
    data = load_splits(task_config(manifest, id_column="id"), max_pixels=HUGE_PIXELS - 1)
    skipped = {skip.id: skip for skip in data.skipped}
    assert {k: skipped[k].reason for k in BAD_IMAGE_REASONS} == BAD_IMAGE_REASONS
    assert len(data.skipped) == len(BAD_IMAGE_REASONS)
    assert all(str(bad_images[k]) == skipped[k].path and k in skipped[k].message for k in BAD_IMAGE_REASONS)
    loaded = {ex.id: ex for ex in data.all}
    assert set(CONVERTIBLE_KINDS) <= set(loaded)
    assert {dspy_image_to_pil(loaded[k].image).mode for k in CONVERTIBLE_KINDS} == {"RGB"}
    assert dspy_image_to_pil(loaded["exif_rotated"].image).size == (32, 48)
    assert_stratified(data)


def test_bad_file_in_an_image_folder_is_skipped_by_path(
    tmp_path: Path, synthetic_data: SyntheticDataset, bad_images: dict[str, Path], task_config: MakeConfig
) -> None:
    folder = tmp_path / "folder"
    shutil.copytree(synthetic_data.folder, folder)
    shutil.copy(bad_images["truncated_png"], folder / "square" / "broken.png")
    shutil.copy(bad_images["wrong_extension"], folder / "circle" / "notes.jpg")
    data = load_splits(task_config(folder))
    assert sorted((s.id, s.reason) for s in data.skipped) == [
        ("circle/notes.jpg", "not_an_image"),
        ("square/broken.png", "truncated"),
    ]
    assert sum(data.sizes().values()) == len(synthetic_data.items)


def test_multi_label_examples_hold_a_label_list(
    tmp_path: Path, synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    rows = [
        {"image": p, "tags": [lab] + (["small"] if i % 2 else [])} for i, (p, lab) in enumerate(synthetic_data.items)
    ]
    manifest = write_jsonl(synthetic_data.root / "multi_label.jsonl", rows)
    data = load_splits(task_config(manifest, task={"output": "multi_label"}))
    assert data.columns.targets == ("tags",)
    assert data.labels == ["circle", "small", "square", "triangle"]
    tagged = {ex.id: ex.label for ex in data.all}
    assert tagged["folder/circle/circle_001.png"] == ["circle", "small"]
    assert tagged["folder/circle/circle_000.png"] == ["circle"]
    assert all(set(ex.inputs().keys()) == {"image"} for ex in data.all)


def test_multi_label_from_a_csv_cell(tmp_path: Path, synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    lines = ["image,tags"] + [f"{p},{lab}|shape" for p, lab in synthetic_data.items]
    manifest = synthetic_data.root / "multi_label.csv"
    manifest.write_text("\n".join(lines) + "\n")
    data = load_splits(
        task_config(manifest, task={"output": "multi_label", "labels": ["shape", *synthetic_data.classes]})
    )
    assert {tuple(ex.label) for ex in data.all} == {("shape", c) for c in synthetic_data.classes}


def test_multi_field_examples_hold_one_key_per_field(
    tmp_path: Path, synthetic_data: SyntheticDataset, task_config: MakeConfig
) -> None:
    rows = [
        {"image": p, "shape": lab, "size": ["small", "large"][i % 2]} for i, (p, lab) in enumerate(synthetic_data.items)
    ]
    rows[0]["size"] = "huge"
    manifest = write_jsonl(synthetic_data.root / "multi_field.jsonl", rows)
    fields = {"shape": list(synthetic_data.classes), "size": ["small", "large"]}
    data = load_splits(task_config(manifest, task={"output": "multi_field", "fields": fields}))
    assert data.fields == fields and data.columns.targets == ("shape", "size")
    assert data.skip_counts() == {"value_not_in_field": 1}
    assert "field 'size' = 'huge' is not one of ['small', 'large']" in data.skipped[0].message
    ex = next(ex for ex in data.all if ex.id == "folder/circle/circle_001.png")
    assert (ex.shape, ex.size) == ("circle", "large")
    assert Counter(ex.shape for ex in data.train) == {"circle": 2, "square": 2, "triangle": 2}


def test_multi_field_missing_column_is_named(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    cfg = task_config(synthetic_data.manifest_csv, task={"output": "multi_field", "fields": {"colour": ["red"]}})
    with pytest.raises(
        DatasetError, match=r"task.fields \['colour'\] have no column; available columns: \['image', 'label'\]"
    ):
        load_splits(cfg)


def test_duplicate_ids_are_an_error(synthetic_data: SyntheticDataset, task_config: MakeConfig) -> None:
    rows = [{"image": p, "label": lab, "key": f"k{i % 20}"} for i, (p, lab) in enumerate(synthetic_data.items)]
    manifest = write_jsonl(synthetic_data.root / "duplicate_ids.jsonl", rows)
    with pytest.raises(DatasetError, match=r"id 'k0' appears twice \(rows 0 and 20\)"):
        load_splits(task_config(manifest, id_column="key"))


def test_unknown_local_path_is_an_error(tmp_path: Path, task_config: MakeConfig) -> None:
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_splits(task_config(tmp_path / "nowhere" / "data.csv"))


def test_hub_id_offline_fails_with_local_alternatives(monkeypatch: pytest.MonkeyPatch, task_config: MakeConfig) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachable) as caught:
        load_splits(task_config("someone/no-such-dataset-here", n_samples=10))
    message = str(caught.value)
    assert "Hub is unreachable" in message and "'someone/no-such-dataset-here'" in message
    assert all(hint in message for hint in ("image folder", "manifest", "save_to_disk"))


def test_hub_id_without_network_fails_at_once(monkeypatch: pytest.MonkeyPatch, task_config: MakeConfig) -> None:
    # Online mode, but the endpoint refuses connections: the probe must report it, not retry.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(HubUnreachable, match=r"Hub is unreachable.*ConnectError"):
        load_splits(task_config("someone/no-such-dataset-here"))


def test_stream_pool_is_a_seeded_shuffle(synthetic_data: SyntheticDataset) -> None:
    def pool(seed: int) -> list[str]:
        # JSON, not Parquet: datasets 5.2 sleeps 5 s after a shuffled Parquet stream (arrow#45214).
        stream = datasets.load_dataset(
            "json", data_files=str(synthetic_data.manifest_jsonl), split="train", streaming=True
        )
        return take_stream_pool(stream, 12, seed)["image"]

    first = pool(0)
    assert len(first) == 12 and first == pool(0) and first != pool(1)
    assert set(first) <= {p for p, _ in synthetic_data.items}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path
