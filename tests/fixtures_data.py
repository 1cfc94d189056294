"""Synthetic labelled image sets, the bad-image corpus, and task configs pointing at them."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest

from vlmopt.config import TaskConfig
from vlmopt.testing.images import SyntheticDataset, make_bad_images, make_image_dataset


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory) -> SyntheticDataset:
    """Ten 64 px images of each of circle / square / triangle, in every source form."""
    return make_image_dataset(tmp_path_factory.mktemp("synthetic"), n_per_class=10)


@pytest.fixture(scope="session")
def bad_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per awkward image kind (see vlmopt.testing.images.make_bad_images)."""
    return make_bad_images(tmp_path_factory.mktemp("bad-images"))


@pytest.fixture
def isolated_datasets_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """Keep the Arrow files datasets' builders write out of the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    yield cache


@pytest.fixture
def task_config() -> Callable[..., TaskConfig]:
    """Build a TaskConfig for a source: ``task_config(path, n_samples=6, task={...}, seed=1)``."""

    def build(source: str | Path, *, task: dict[str, Any] | None = None, seed: int = 0, **dataset: Any) -> TaskConfig:
        return TaskConfig(seed=seed, dataset={"source": str(source), **dataset}, task=task or {})

    return build
