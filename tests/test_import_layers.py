"""Programs talk to ``dspy.LM`` only: importing them, or loading an artifact, needs no torch.

An app that replays a frozen program against a vLLM server must not pay for (or even have)
torch and transformers; they belong to the in-process backend. Run in a fresh interpreter, so
what other tests imported cannot hide an import chain.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_programs_and_artifacts_import_neither_torch_nor_transformers():
    code = ("import sys, vlmopt.programs, vlmopt.artifacts; "
            "from vlmopt.artifacts import load_artifact; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_demo_package_and_synthetic_images_load_no_model_stack():
    """``vlmopt.testing.images`` draws the demo's shapes; that must not drag in torch or the pipeline."""
    code = ("import sys, vlmopt.demo, vlmopt.testing.images; "
            "print(sorted(m for m in ('torch', 'transformers', 'vlmopt.pipeline') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_cli_help_and_config_validate_load_no_model_stack():
    """``vlmopt --help``, a command's ``--help`` and ``config validate`` must start fast: no torch, dspy,
    transformers or datasets (the libraries are quieted through their environment variables instead)."""
    code = ("import sys; from typer.testing import CliRunner; from vlmopt.cli import app; r = CliRunner(); "
            "codes = [r.invoke(app, args).exit_code for args in "
            "(['--help'], ['optimize', '--help'], ['review', 'export', '--help'], "
            "['config', 'validate', 'configs/cats_vs_dogs.yaml'])]; "
            "print(codes, sorted(m for m in ('torch', 'dspy', 'transformers', 'datasets') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[0, 0, 0, 0] []"
