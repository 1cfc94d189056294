"""Bad invocations as a new user makes them: each exits 2 with one line naming the bad item, never a traceback.

Our errors (``VlmoptError``) print one ``error:`` line (``stopped:`` for a run that stopped),
soft-wrapped so that it stays one line at any terminal width; the runner's console is 80 columns
wide and most messages here are longer. Typer's usage errors (a bad choice, a number out of its
range, a missing path) exit 2 with the option named. Everything runs in-process with typer's
CliRunner and no model load, except ``serve``, which runs as a subprocess (it installs a SIGTERM
handler).
"""

import ast
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

import vlmopt.errors
from vlmopt.artifacts import save_artifact
from vlmopt.cli import app
from vlmopt.cli_choices import Backend, ExportFormat, Objective, Split
from vlmopt.config import BackendConfig, OptimizerConfig, TaskConfig
from vlmopt.errors import OFFLINE_HINT
from vlmopt.export import FORMATS
from vlmopt.pipeline import SplitName
from vlmopt.programs import create_program
from vlmopt.serving.vllm_server import free_port

SHAPES = ["circle", "square", "triangle"]


@dataclass(frozen=True)
class World:
    """The files the bad invocations point at (built once for the module)."""

    root: Path
    data: Path  # a good image folder, three shape classes
    artifact: Path  # a valid artifact over SHAPES

    def path(self, name: str) -> str:
        return str(self.root / name)

    def config(self, name: str, **sections) -> str:
        """A task YAML over the good data (no model is ever loaded: each case fails before)."""
        cfg = {
            "name": name,
            "model": {"id": self.path("no-model-needed")},
            "dataset": {"source": str(self.data), "kind": "imagefolder", "max_image_side": 32},
            "task": {"labels": SHAPES},
            "run": {"output_dir": self.path("runs"), "cache_dir": self.path("cache"), "num_threads": 2},
        }
        for key, value in sections.items():
            cfg[key] = {**cfg.get(key, {}), **value}
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    def dead_server(self) -> dict:
        return {"kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1"}


def _png(path: Path, colour=(200, 0, 0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory, synthetic_data) -> World:
    root = tmp_path_factory.mktemp("fuzz")
    (root / "empty").mkdir()
    (root / "text-only" / "cat").mkdir(parents=True)
    (root / "text-only" / "cat" / "notes.txt").write_text("not an image")
    for i in range(3):
        _png(root / "one-class" / "cat" / f"{i}.png")
        _png(root / "manifest-imgs" / f"{i}.png")
    (root / "one-class.csv").write_text("image,label\n" + "".join(f"manifest-imgs/{i}.png,cat\n" for i in range(3)))
    (root / "not-a-run").mkdir()
    (root / "a-file.txt").write_text("a file, not a folder")
    (root / "single.parquet").write_bytes(b"PAR1 an old single-file output")
    (root / "not-yaml.yaml").write_text("model: {id: x\n")
    (root / "a-list.yaml").write_text("- model\n- dataset\n")
    (root / "not-a-vlm").mkdir()
    (root / "not-a-vlm" / "config.json").write_text(json.dumps({"model_type": "bert"}))

    cfg = TaskConfig(dataset={"source": "-"}, task={"labels": SHAPES})
    artifact = save_artifact(create_program(cfg.task, SHAPES), cfg, SHAPES, root / "artifact.json",
                             metrics={}, provenance={})
    other = cfg.model_copy(update={"task": cfg.task.model_copy(update={"labels": ["cat", "dog"]})})
    save_artifact(create_program(other.task, ["cat", "dog"]), other, ["cat", "dog"], root / "cat-dog.json",
                  metrics={}, provenance={})
    text = artifact.read_text()
    tampered = {**json.loads(text), "metrics": {"test": {"accuracy": 1.0}}}  # the old sha256 kept
    (root / "tampered.json").write_text(json.dumps(tampered))
    (root / "truncated.json").write_text(text[: len(text) // 2])
    return World(root=root, data=synthetic_data.folder, artifact=artifact)


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``args(world)``, and what stderr must say."""

    args: Callable[[World], list[str]]
    says: tuple[str, ...]  # all on the one error line (usage errors: anywhere in typer's panel)
    usage: bool = False  # typer refuses it before the command runs
    prefix: str = "error"
    then: str | None = None  # the hint line expected after the error line
    not_said: str | None = None
    subprocess: bool = False


CASES = {
    # the six of the issue
    "report-not-a-run": Case(lambda w: ["report", w.path("nowhere")], ("nowhere", "does not exist", "metrics.json")),
    "empty-image-folder": Case(
        lambda w: ["evaluate", w.config("empty", dataset={"source": w.path("empty")})],
        ("empty", "no image files", ".jpg", "<class_name>/")),
    "single-class-folder": Case(
        lambda w: ["evaluate", w.config("one", dataset={"source": w.path("one-class")})],
        ("two or more classes", "found only 'cat'", "one-class")),
    "negative-limit": Case(lambda w: ["evaluate", w.config("ok"), "--limit", "-1"], ("--limit", "1"), usage=True),
    "serve-missing-model": Case(lambda w: ["serve", w.path("no-such-model")], ("no-such-model", "does not exist"),
                                subprocess=True),
    "serve-without-vllm": Case(lambda w: ["serve", str(w.root / "not-a-vlm"), "--python", sys.executable],
                               ("has no vLLM", "pip install 'vlmopt[vllm]'", "VLMOPT_VLLM_PYTHON"), subprocess=True),
    # and more, tried as a new user
    "report-plain-folder": Case(lambda w: ["report", w.path("not-a-run")], ("not-a-run", "has no metrics.json")),
    "report-a-file": Case(lambda w: ["report", w.path("a-file.txt")], ("a-file.txt", "is a file")),
    "report-three-non-runs": Case(lambda w: ["report", *[w.path("not-a-run")] * 3],
                                  ("not-a-run", "has no metrics.json")),
    "folder-of-text-files": Case(
        lambda w: ["evaluate", w.config("text", dataset={"source": w.path("text-only")})], ("text-only", ".png")),
    "single-class-manifest": Case(
        lambda w: ["evaluate", w.config("csv", dataset={"source": w.path("one-class.csv"), "kind": "manifest"},
                                        task={"labels": None})],
        ("two or more classes", "found only 'cat'", "one-class.csv")),
    "missing-config": Case(lambda w: ["evaluate", w.path("absent.yaml")], ("config file not found", "absent.yaml")),
    "config-not-yaml": Case(lambda w: ["config", "validate", w.path("not-yaml.yaml")],
                            ("not-yaml.yaml", "not valid YAML", "line 2")),
    "config-a-list": Case(lambda w: ["config", "validate", w.path("a-list.yaml")], ("a YAML mapping, got list",)),
    "backend-kind-in-yaml": Case(lambda w: ["config", "validate", w.config("vllm", backend={"kind": "vllm"})],
                                 ("backend.kind", "'vllm'")),
    "bad-storage-url": Case(lambda w: ["optimize", w.config("ok"), "--storage", "not-a-url", "--search", "1"],
                            ("optimizer.storage", "sqlite:///")),
    "worker-without-search": Case(lambda w: ["optimize", w.config("ok"), "--worker"], ("--search N",)),
    "model-path-missing": Case(lambda w: ["evaluate", w.config("ok")], ("no-model-needed", "does not exist"),
                               not_said="demo --offline"),
    "model-not-a-vlm": Case(lambda w: ["evaluate", w.config("bert", model={"id": str(w.root / "not-a-vlm")})],
                            ("not-a-vlm", "chat template")),
    "hub-model-offline": Case(lambda w: ["evaluate", w.config("hub", model={"id": "nobody/no-such-model"})],
                              ("nobody/no-such-model", "hub is unreachable"), then=OFFLINE_HINT),
    "api-key-env-unset": Case(
        lambda w: ["evaluate", w.config("key", backend={**w.dead_server(), "api_key_env": "VLMOPT_FUZZ_NO_KEY"})],
        ("VLMOPT_FUZZ_NO_KEY", "is not set")),
    "dead-server": Case(lambda w: ["evaluate", w.config("dead", backend=w.dead_server())],
                        ("too many failed items", "Connection refused"), prefix="stopped"),
    "dead-server-few-items": Case(lambda w: ["evaluate", w.config("dead", backend=w.dead_server()), "--limit", "3"],
                                  ("all 3 items failed", "Connection refused"), prefix="stopped"),
    "artifact-missing": Case(lambda w: ["predict", str(w.data), "--artifact", w.path("absent.json")],
                             ("artifact not found", "absent.json")),
    "artifact-tampered": Case(lambda w: ["export", "--artifact", w.path("tampered.json")],
                              ("tampered.json", "sha256 mismatch")),
    "artifact-truncated": Case(lambda w: ["export", "--artifact", w.path("truncated.json")],
                               ("truncated.json", "truncated or corrupt")),
    "artifact-not-json": Case(lambda w: ["export", "--artifact", w.config("ok")], ("ok.yaml", "not a complete JSON")),
    "artifact-other-labels": Case(
        lambda w: ["evaluate", w.config("labels", backend=w.dead_server()), "--artifact", w.path("cat-dog.json")],
        ("cat-dog.json", "['cat', 'dog']", "['circle', 'square', 'triangle']")),
    "predict-empty-folder": Case(lambda w: ["predict", w.path("empty"), "--artifact", str(w.artifact)],
                                 ("no image files in", "empty")),
    "predict-missing-folder": Case(lambda w: ["predict", w.path("absent"), "--artifact", str(w.artifact)],
                                   ("absent", "does not exist")),
    "predict-bad-max-failures": Case(lambda w: ["predict", str(w.data), "--artifact", str(w.artifact),
                                                "--max-failures", "lots"], ("--max-failures", "a count"), usage=True),
    "predict-output-a-parquet-file": Case(
        lambda w: ["predict", str(w.data), "--artifact", str(w.artifact), "-o", w.path("single.parquet")],
        ("single.parquet", "single Parquet file", "another -o")),
    "predict-output-a-folder": Case(
        lambda w: ["predict", str(w.data), "--artifact", str(w.artifact), "-o", w.path("empty")],
        ("--output", "empty", "is a folder")),
    "predict-zero-threads": Case(lambda w: ["predict", str(w.data), "--artifact", str(w.artifact),
                                            "--num-threads", "0"], ("--num-threads",), usage=True),
    "export-under-a-file": Case(lambda w: ["export", "--artifact", str(w.artifact), "-o", w.path("a-file.txt/x.json")],
                                ("--output", "a-file.txt is a file, not a folder")),
    "bad-split": Case(lambda w: ["evaluate", w.config("ok"), "--split", "holdout"], ("--split", "holdout"), usage=True),
    "bad-backend-option": Case(lambda w: ["evaluate", w.config("ok"), "--backend", "vllm"], ("--backend", "vllm"),
                               usage=True),
    "bad-format": Case(lambda w: ["export", "--artifact", str(w.artifact), "--format", "yaml"], ("--format", "yaml"),
                       usage=True),
    "bad-objective": Case(lambda w: ["optimize", w.config("ok"), "--objective", "speed"], ("--objective", "speed"),
                          usage=True),
    "zero-threads": Case(lambda w: ["evaluate", w.config("ok"), "--num-threads", "0"], ("--num-threads",),
                         usage=True),
    "negative-search": Case(lambda w: ["optimize", w.config("ok"), "--search", "-1"], ("--search",), usage=True),
    "port-out-of-range": Case(lambda w: ["serve", "some/model", "--port", "70000"], ("--port",), usage=True),
    "demo-without-offline": Case(lambda w: ["demo"], ("vlmopt demo --offline",)),
}


def _run(case: Case, args: list[str]) -> tuple[int, str, str]:
    """(exit code, stderr, all output) of the command, in-process unless the case needs a process."""
    if case.subprocess:
        done = subprocess.run([sys.executable, "-m", "vlmopt.cli", *args], capture_output=True, text=True,
                              timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})
        return done.returncode, done.stderr, done.stdout + done.stderr
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr, result.output


@pytest.mark.parametrize("name", list(CASES))
def test_bad_invocation_is_one_line_and_exit_2(name, world, isolated_datasets_cache):
    case = CASES[name]
    before = set(Path.cwd().iterdir())
    code, stderr, output = _run(case, case.args(world))
    assert "Traceback" not in output, output
    assert code == 2, output
    assert set(Path.cwd().iterdir()) == before  # a refused command leaves nothing behind (no empty outputs)
    if case.usage:
        said = " ".join(stderr.replace("│", " ").split())
        assert "Invalid value" in said or "does not exist" in said, said
        assert all(part in said for part in case.says), said
        return
    lines = stderr.strip().splitlines()
    headed = [line for line in lines if line.startswith(f"{case.prefix}:")]
    assert len(headed) == 1, stderr
    assert all(part in headed[0] for part in case.says), headed[0]
    rest = lines[lines.index(headed[0]) + 1:]
    assert rest == ([case.then] if case.then else []), stderr
    if case.not_said:
        assert case.not_said not in output


def test_choices_are_the_librarys_and_help_lists_them():
    """The enums mirror the sets the library checks; --help shows every choice."""
    assert {s.value for s in Split} == set(get_args(SplitName))
    assert {b.value for b in Backend} == set(get_args(BackendConfig.model_fields["kind"].annotation))
    assert {f.value for f in ExportFormat} == set(FORMATS)
    (objective,) = get_args(OptimizerConfig.model_fields["search_objectives"].annotation)
    assert {o.value for o in Objective} == set(get_args(objective))
    for command, choices in (("evaluate", [*Split, *Backend]), ("export", ExportFormat), ("optimize", Objective)):
        shown = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output
        assert all(choice.value in shown for choice in choices), (command, shown)


def test_the_error_base_imports_nothing_from_vlmopt():
    """Every layer subclasses ``VlmoptError``; the module must not import any of them back."""
    tree = ast.parse(Path(vlmopt.errors.__file__).read_text())
    imported = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [getattr(node, "module", None) for node in imported] == ["__future__"]
