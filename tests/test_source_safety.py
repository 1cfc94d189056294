"""Nothing in the project deserialises code: no pickle, no eval/exec, no unsafe YAML, no torch.load.

Parsed with ``ast``, so a docstring that *mentions* pickle does not count and a real call cannot
hide behind formatting.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("vlmopt", "tests", "bench", "scripts") for p in (ROOT / d).rglob("*.py"))
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_CALLS = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("torch", "load"),
                ("numpy", "load"), ("np", "load")}


def problems(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in UNSAFE_MODULES:
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in {"eval", "exec", "__import__"}:
                found.append(f"{func.id}()")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in UNSAFE_CALLS:
                    found.append(f"{func.value.id}.{func.attr}()")
    return [f"{path.relative_to(root)}:{p}" for p in found]


def test_sources_were_found():
    assert len(SOURCES) > 30 and any(p.name == "artifacts.py" for p in SOURCES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_code_deserialisation(path):
    assert problems(path) == []


def test_the_scanner_catches_what_it_looks_for(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport yaml\nx = eval('1')\nyaml.load(s)\nfrom dill import loads\nm.eval()\n")
    assert sorted(problems(bad, root=tmp_path)) == sorted(
        ["bad.py:import pickle", "bad.py:from dill import ...", "bad.py:eval()", "bad.py:yaml.load()"]
    )
