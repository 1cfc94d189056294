"""The AST check behind ``test_dspy_compat``: outside the seam, vlmopt uses DSPy's public API only.

Public means: a top-level ``dspy`` name, or a name in the ``__all__`` of a one-level DSPy
namespace (``dspy.lm15``, ``dspy.experimental``, ``dspy.adapters`` ...). Outside
``vlmopt/_dspy_compat.py`` a module may not

* import anything else from DSPy (``dspy._vendor...``, ``dspy.clients.engines.base``, ``from
  dspy.x import _y``) nor reach it as an attribute chain (``dspy.adapters.utils.x``);
* read a private attribute that vlmopt does not define itself (``demo._input_keys``);
* override a private method of a DSPy base class unless the seam vouches for it
  (``ADAPTER_HOOKS``/``OPTIMIZER_HOOKS``, checked at import);
* pass an undocumented key to ``dspy.context``/``dspy.settings.context``/``dspy.configure``.

It parses the source (comments and strings cannot fool it) and resolves DSPy names against the
installed DSPy, so it knows what that DSPy actually exports.
"""

from __future__ import annotations

import ast
import importlib
import types
from collections.abc import Iterable
from pathlib import Path

import dspy

from vlmopt._dspy_compat import ADAPTER_HOOKS, OPTIMIZER_HOOKS

SEAM = "_dspy_compat.py"
DOCUMENTED_SETTINGS = frozenset({"lm", "adapter", "track_usage", "callbacks", "async_max_workers"})
SETTINGS_CALLS = ("dspy.context", "dspy.settings.context", "dspy.configure")
VOUCHED_METHODS = frozenset(ADAPTER_HOOKS) | frozenset(OPTIMIZER_HOOKS)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.endswith("__")


def _public_namespace(module: str) -> types.ModuleType | None:
    """``dspy`` itself or ``dspy.<name>`` with an ``__all__``; None for anything deeper or private."""
    parts = module.split(".")
    if parts[0] != "dspy" or len(parts) > 2 or any(_private(p) for p in parts):
        return None
    try:
        found = importlib.import_module(module)
    except ImportError:
        return None
    return found if module == "dspy" or hasattr(found, "__all__") else None


def _is_public(module: str, name: str) -> bool:
    """``from module import name`` is public API (see the module docstring)."""
    namespace = _public_namespace(module)
    if namespace is None or _private(name):
        return False
    if module == "dspy":
        return hasattr(dspy, name) or _public_namespace(f"dspy.{name}") is not None
    return name in namespace.__all__


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def own_private_names(sources: Iterable[tuple[str, str]]) -> set[str]:
    """Private attributes vlmopt defines itself: its classes' members and the attributes it assigns."""
    names = set()
    for _, text in sources:
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(item.name)
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if _private(n)}


class _ModuleCheck(ast.NodeVisitor):
    def __init__(self, path: str, own: set[str]):
        self.path, self.own = path, own
        self.found: list[str] = []
        self.dspy_objects: dict[str, object] = {}  # local name -> DSPy object it was imported as

    def flag(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.path}:{node.lineno}: {what}")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] != "dspy":
                continue
            if _public_namespace(alias.name) is None:
                self.flag(node, f"import {alias.name}")
            elif alias.asname:  # ``import dspy.lm15 as l`` binds the namespace, ``import dspy.lm15`` binds dspy
                self.dspy_objects[alias.asname] = importlib.import_module(alias.name)
            else:
                self.dspy_objects["dspy"] = dspy

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if module.split(".")[0] != "dspy":
            return
        for alias in node.names:
            if not _is_public(module, alias.name):
                self.flag(node, f"from {module} import {alias.name}")
            else:
                self.dspy_objects[alias.asname or alias.name] = getattr(importlib.import_module(module), alias.name)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain = _dotted(node)
        if chain and chain.startswith("dspy.") and not isinstance(getattr(node, "parent", None), ast.Attribute):
            self._check_chain(node, chain.split("."))
        if _private(node.attr) and node.attr not in self.own and _dotted(node.value) not in ("self", "cls"):
            self.flag(node, f"private attribute .{node.attr}")
        self.generic_visit(node)

    def _check_chain(self, node: ast.AST, parts: list[str]) -> None:
        """Walk ``dspy.a.b...`` while it names modules: each step must be public in a public namespace."""
        current: object = dspy
        for part in parts[1:]:
            if not isinstance(current, types.ModuleType):
                return  # past the modules: attributes of a public object
            if not _is_public(current.__name__, part):
                self.flag(node, ".".join(parts))
                return
            current = getattr(current, part, None) or importlib.import_module(f"{current.__name__}.{part}")

    def visit_Call(self, node: ast.Call) -> None:
        if _dotted(node.func) in SETTINGS_CALLS:
            for keyword in node.keywords:
                if keyword.arg is None or keyword.arg not in DOCUMENTED_SETTINGS:
                    self.flag(node, f"{_dotted(node.func)}({keyword.arg or '**'}=...)")
        self.generic_visit(node)

    def check_overrides(self, tree: ast.Module) -> None:
        classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
        for cls in classes.values():
            dspy_bases = [b for b in map(self._resolve, cls.bases) if isinstance(b, type)]
            private = {n for base in dspy_bases for k in base.__mro__ for n in vars(k) if _private(n)} - VOUCHED_METHODS
            for own in self._local_mro(cls, classes):
                for item in own.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name in private:
                        self.flag(item, f"{own.name}.{item.name} overrides a private DSPy method")

    def _resolve(self, node: ast.AST) -> object | None:
        parts = (_dotted(node) or "").split(".")
        found = self.dspy_objects.get(parts[0])
        for part in parts[1:]:
            found = getattr(found, part, None)
        return found

    @staticmethod
    def _local_mro(cls: ast.ClassDef, classes: dict[str, ast.ClassDef]) -> list[ast.ClassDef]:
        """The class and the same-module classes it derives from (a mixin's overrides count)."""
        out, todo = [], [cls]
        while todo:
            current = todo.pop()
            out.append(current)
            todo += [classes[b.id] for b in current.bases if isinstance(b, ast.Name) and b.id in classes]
        return out


def violations(sources: Iterable[tuple[str, str]]) -> list[str]:
    """Every use of a DSPy internal in ``(path, source)`` pairs, as ``path:line: what``."""
    sources = list(sources)
    own = own_private_names(sources)
    found = []
    for path, text in sources:
        tree = ast.parse(text)
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                child.parent = node
        check = _ModuleCheck(path, own)
        check.visit(tree)
        check.check_overrides(tree)
        found += check.found
    return found


def package_sources(root: Path) -> list[tuple[str, str]]:
    """The package's modules but the seam, as ``(relative path, source)``."""
    return [(str(p.relative_to(root.parent)), p.read_text()) for p in sorted(root.rglob("*.py")) if p.name != SEAM]
