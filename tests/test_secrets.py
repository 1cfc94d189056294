"""An API key planted in the environment never reaches artifacts, run directories, reports or logs.

The key is real as far as the stack is concerned: it is sent to the real vLLM test server on
every request (which accepts any key), through the whole optimize protocol.
"""

import logging

import pytest

from vlmopt.config import parse_config
from vlmopt.pipeline import optimize_task

KEY = "sk-vlmopt-planted-4f1c9a7e0b2d"
pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def test_planted_key_is_written_nowhere(vllm_server, synthetic_data, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("VLMOPT_TEST_API_KEY", KEY)
    cfg = parse_config({
        "name": "secrets",
        "model": {"id": vllm_server.model, "max_new_tokens": 16},
        "backend": {"kind": "openai", "base_url": vllm_server.base_url, "api_key_env": "VLMOPT_TEST_API_KEY"},
        "dataset": {"source": str(synthetic_data.folder), "kind": "imagefolder", "max_image_side": 64},
        "task": {"labels": list(synthetic_data.classes), "system_prompt": "Shapes.", "user_prompt": "Which shape?"},
        "optimizer": {"auto": None, "num_candidates": 2, "num_trials": 2, "max_bootstrapped_demos": 1,
                      "max_labeled_demos": 1, "minibatch": False, "prompt_model": "none",
                      "instructions": ["Name the shape."]},
        "run": {"output_dir": str(tmp_path / "runs"), "cache_dir": str(tmp_path / "cache"), "num_threads": 2},
    })
    with caplog.at_level(logging.DEBUG):
        outcome = optimize_task(cfg)
    assert outcome.optimized["test"].metrics["n"] == 12  # the run really went through the server

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "artifact.json" for p in written) and any(p.name == "report.html" for p in written)
    leaks = [str(p) for p in written if KEY.encode() in p.read_bytes()]
    assert leaks == []
    out = capsys.readouterr()
    assert KEY not in out.out + out.err + caplog.text
    assert "VLMOPT_TEST_API_KEY" in (outcome.run.path / "config.yaml").read_text()  # the *name* is kept
