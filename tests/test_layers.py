"""The package's layers, checked from its import statements: each layer imports only those below it.

The flow (README, "Architecture") is config -> datasets -> metrics -> programs -> backends ->
evaluate / optimizers -> artifacts -> reports / predict, with the CLI on top. The rules below are the ones a refactor
most easily breaks; each names the modules it forbids, and the check reads the source with
``ast`` (module-level and function-level imports alike), so comments and strings cannot fool it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vlmopt"

# layer (a package or module under vlmopt) -> vlmopt modules it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "programs": ("vlmopt.serving", "vlmopt.optimizers", "vlmopt.reports", "vlmopt.pipeline", "vlmopt.cli"),
    "metrics": ("vlmopt.programs", "vlmopt.serving", "vlmopt.optimizers", "vlmopt.reports", "vlmopt.pipeline",
                "vlmopt.evaluate"),
    "datasets": ("vlmopt.programs", "vlmopt.serving", "vlmopt.optimizers", "vlmopt.reports", "vlmopt.pipeline"),
    "serving": ("vlmopt.optimizers", "vlmopt.reports", "vlmopt.pipeline", "vlmopt.evaluate", "vlmopt.cli"),
    "optimizers": ("vlmopt.pipeline", "vlmopt.cli"),
    "alternatives": ("vlmopt.programs", "vlmopt.optimizers", "vlmopt.pipeline", "vlmopt.evaluate", "vlmopt.cli"),
    # LoRA fine-tuning trains and evaluates the VLM program itself: it sits where optimize does
    "alternatives/finetune": ("vlmopt.optimizers", "vlmopt.cli"),
    "alternatives/finetune_data": ("vlmopt.optimizers", "vlmopt.pipeline", "vlmopt.evaluate", "vlmopt.cli"),
    # review reads what runs and predict wrote and talks to Label Studio; it runs no model
    "review": ("vlmopt.serving", "vlmopt.optimizers", "vlmopt.pipeline", "vlmopt.evaluate", "vlmopt.programs",
               "vlmopt.cli"),
}
ABOVE_THE_PROGRAM = {"alternatives/finetune.py", "alternatives/finetune_data.py"}
"""The alternatives that run the VLM program, checked by their own rules instead of the package's."""
# the one deliberate exception: training the shipped micro-VLM starts from the tiny Idefics3 builder
TESTING_IMPORT_ALLOWED = {("vlmopt/demo/micro_vlm.py", "build_untrained")}


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(imported vlmopt module, enclosing function or None) for every import in ``path``."""
    found: list[tuple[str, str | None]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, function))
                found.extend((f"{child.module}.{alias.name}", function) for alias in child.names)
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return [(name, fn) for name, fn in found if name.startswith("vlmopt")]


def _modules(layer: str) -> list[Path]:
    target = PACKAGE / layer
    return sorted(target.rglob("*.py")) if target.is_dir() else [target.with_suffix(".py")]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    offending = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in _modules(layer)
        if layer != "alternatives" or path.relative_to(PACKAGE).as_posix() not in ABOVE_THE_PROGRAM
        for name, _ in _imports(path)
        if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[layer])
    ]
    assert not offending, "\n".join(offending)


def test_nothing_a_user_runs_imports_the_test_helpers():
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        if relative.startswith("vlmopt/testing/"):
            continue
        offending += [
            f"{relative} imports {name}" for name, function in _imports(path)
            if name.startswith("vlmopt.testing") and (relative, function) not in TESTING_IMPORT_ALLOWED
        ]
    assert not offending, "\n".join(offending)


def test_the_checker_sees_imports_inside_functions(tmp_path):
    """The check itself: a function-level import is found and attributed to its function."""
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from vlmopt.testing import images\n", encoding="utf-8")
    assert ("vlmopt.testing", "f") in _imports(source) and ("vlmopt.testing.images", "f") in _imports(source)
