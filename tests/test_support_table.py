"""The README's support table is the registry and the matrix tests, not a hand-written claim."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import support_matrix
import test_transformers_engine
import test_vllm_families
from fixtures_models import vllm_archs
from vlmopt.config import load_config
from vlmopt.serving.families import FAMILIES

REPO = Path(__file__).resolve().parents[1]


def test_readme_holds_the_generated_table():
    readme = (REPO / "README.md").read_text()
    assert support_matrix.render() in readme, "README's table is stale: run python tests/support_matrix.py"


@pytest.mark.parametrize(("module", "fixture", "tests"), [
    (test_transformers_engine, "lm", support_matrix.IN_PROCESS),
    (test_vllm_families, "family_server", support_matrix.VLLM),
])
def test_every_column_is_a_test_run_per_family(module, fixture, tests):
    for entry in tests.values():
        function = getattr(module, entry[0] if isinstance(entry, tuple) else entry)
        assert fixture in inspect.signature(function).parameters, f"{function.__name__} does not run per family"


def test_each_vllm_column_runs_on_exactly_the_families_it_claims():
    for name, key in support_matrix.VLLM.values():
        (mark,) = [m for m in getattr(test_vllm_families, name).pytestmark if m.name == "parametrize"]
        assert mark.args[0] == "family_server" and tuple(mark.args[1]) == vllm_archs(key), name


def test_every_family_has_an_example_config_with_its_real_model_id():
    for family in FAMILIES:
        cfg = load_config(REPO / "configs" / "families" / f"{family.tiny_arch}.yaml")
        assert cfg.model.id == family.example_id
