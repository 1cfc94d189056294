"""Session-scoped tiny VLM checkpoints (real architectures, random weights), built once per run."""

from collections.abc import Callable
from pathlib import Path

import pytest

from vlmopt.serving.families import FAMILIES
from vlmopt.testing.tiny_vlm import build_tiny_vlm

TINY_ARCHS = tuple(family.tiny_arch for family in FAMILIES if family.tiny_arch)
"""Every registered family's tiny build: the conformance matrix's rows."""

def vllm_archs(feature: str) -> tuple[str, ...]:
    """The families whose ``feature`` the CPU vLLM build serves here: that vLLM conformance test's rows."""
    return tuple(family.tiny_arch for family in FAMILIES if family.tiny_arch and family.vllm.supports(feature))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``tiny_model_dir(arch)``: that family's tiny checkpoint, built on first use and shared by the session."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_vlm(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_lfm2_vl_dir(tiny_model_dir) -> Path:
    """Directory of a tiny LFM2-VL checkpoint, loadable with AutoProcessor / AutoModelForImageTextToText."""
    return tiny_model_dir("lfm2_vl")


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tiny_model_dir) -> Path:
    """Directory of a tiny Idefics3 (SmolVLM) checkpoint, loadable the same way."""
    return tiny_model_dir("idefics3")
