"""Session-scoped tiny VLM checkpoints (real architectures, random weights), built once per run."""

from pathlib import Path

import pytest

from vlmopt.testing.tiny_vlm import build_tiny_vlm


@pytest.fixture(scope="session")
def tiny_lfm2_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny LFM2-VL checkpoint, loadable with AutoProcessor / AutoModelForImageTextToText."""
    return build_tiny_vlm("lfm2_vl", tmp_path_factory.mktemp("tiny-lfm2-vl"))


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of a tiny Idefics3 (SmolVLM) checkpoint, loadable the same way."""
    return build_tiny_vlm("idefics3", tmp_path_factory.mktemp("tiny-idefics3"))
