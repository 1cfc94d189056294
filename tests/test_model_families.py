"""The model-family registry: every family's tiny build is recognised, and what lies outside it is handled.

The features themselves run per family in test_transformers_engine.py (in-process) and
test_vllm_families.py (vLLM); this module checks the registry's own promises: lookups, the
generic path's load-time check, missing packages and chat templates as one-line errors, and
``vlmopt serve``'s checks before vLLM starts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
from transformers import AutoConfig

import support_matrix
from fixtures_models import TINY_ARCHS
from vlmopt.serving import families, generic_check
from vlmopt.serving.chat_inputs import ChatInput
from vlmopt.serving.families import FAMILIES, GENERIC, VLLM_FEATURES, UnsupportedModelError, family_for_config
from vlmopt.serving.transformers_engine import TransformersEngine
from vlmopt.serving.vllm_server import DEFAULT_MAX_MODEL_LEN, default_max_model_len, family_args, model_max_len
from vlmopt.testing.tiny_vlm import BUILDERS


def test_every_family_has_a_tiny_build_and_real_defaults():
    assert set(TINY_ARCHS) == set(BUILDERS)
    model_types = [t for family in FAMILIES for t in family.model_types]
    assert len(model_types) == len(set(model_types))
    for family in FAMILIES:
        assert "/" in family.example_id and family.model_types
        assert family.vllm.cpu or family.vllm.reason  # not served here: the matrix says why


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_tiny_build_is_recognised_as_its_family(arch, tiny_model_dir):
    config = AutoConfig.from_pretrained(tiny_model_dir(arch))
    family = family_for_config(config)
    assert family.tiny_arch == arch
    if family.vllm.architecture is not None:
        assert config.architectures == [family.vllm.architecture]


def _without(monkeypatch, model_type: str) -> None:
    monkeypatch.setattr(families, "FAMILIES", tuple(f for f in FAMILIES if model_type not in f.model_types))


def test_unregistered_sequential_architecture_runs_the_generic_path(monkeypatch, tiny_idefics3_dir):
    _without(monkeypatch, "idefics3")
    engine = TransformersEngine(str(tiny_idefics3_dir))
    try:
        assert engine.family is GENERIC  # the load-time check passed: cached scoring equals a plain forward
    finally:
        engine.close()


def test_unregistered_mrope_architecture_is_refused_naming_the_families(monkeypatch, tiny_model_dir):
    _without(monkeypatch, "qwen2_vl")
    with pytest.raises(UnsupportedModelError, match=r"not a model family vlmopt knows.*Supported families: .*LFM2-VL"):
        TransformersEngine(str(tiny_model_dir("qwen2_vl")))


def test_missing_extra_package_is_one_line_before_loading(monkeypatch, tiny_idefics3_dir):
    smol = next(f for f in FAMILIES if "idefics3" in f.model_types)
    patched = tuple(f if f is not smol else replace(f, requires=("no_such_package_vlmopt",)) for f in FAMILIES)
    monkeypatch.setattr(families, "FAMILIES", patched)
    with pytest.raises(UnsupportedModelError, match="pip install no_such_package_vlmopt"):
        TransformersEngine(str(tiny_idefics3_dir))


def test_checkpoint_without_chat_template_says_how_to_add_one(tmp_path, tiny_idefics3_dir):
    model_dir = shutil.copytree(tiny_idefics3_dir, tmp_path / "no-template")
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    for name in ("processor_config.json", "tokenizer_config.json", "chat_template.json"):
        path = model_dir / name
        if path.exists():
            data = json.loads(path.read_text())
            data.pop("chat_template", None)
            path.write_text(json.dumps(data))
    with pytest.raises(UnsupportedModelError, match="chat_template.jinja"):
        TransformersEngine(str(model_dir))


def test_paligemma_gets_the_registry_template(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir("paligemma")))
    try:
        assert engine.processor.chat_template == engine.family.default_chat_template  # the hub ships none
    finally:
        engine.close()


def test_max_model_len_comes_from_the_model(tmp_path, tiny_idefics3_dir):
    assert model_max_len(str(tiny_idefics3_dir)) == 4096
    short = tmp_path / "short"
    short.mkdir()
    (short / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 2048}}))
    assert default_max_model_len(str(short)) == 2048
    long = tmp_path / "long"
    long.mkdir()
    (long / "config.json").write_text(json.dumps({"max_position_embeddings": 128000}))
    assert default_max_model_len(str(long)) == DEFAULT_MAX_MODEL_LEN
    assert default_max_model_len(str(tmp_path / "absent" / "x")) == DEFAULT_MAX_MODEL_LEN


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vlmopt.cli", "serve", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "COLUMNS": "200"})


def test_serve_checks_the_model_directory_first(tmp_path):
    result = _serve(str(tmp_path / "not-a-model"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_serve_without_vllm_says_how_to_get_it(tiny_idefics3_dir):
    result = _serve(str(tiny_idefics3_dir), "--python", sys.executable)  # the main venv has no vLLM
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no vLLM" in result.stderr and "VLMOPT_VLLM_PYTHON" in result.stderr


def test_generic_check_refuses_scores_that_differ_without_an_error(monkeypatch, tiny_idefics3_dir):
    """The check's reason to exist: cached scores that are wrong without any exception."""
    _without(monkeypatch, "idefics3")
    real = generic_check.score_candidates
    monkeypatch.setattr(generic_check, "score_candidates",
                        lambda *args, **kwargs: [[s + 0.01 for s in row] for row in real(*args, **kwargs)])
    with pytest.raises(UnsupportedModelError, match="differ from a plain forward"):
        TransformersEngine(str(tiny_idefics3_dir))


def test_qwen3_5_answers_after_a_closed_thinking_block(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir("qwen3_5")))
    try:
        chat = ChatInput(messages=[{"role": "user", "content": [{"type": "text", "text": "Cat?"}]}])
        assert engine.render_prompt(chat).endswith("<think>\n\n</think>\n\n")
    finally:
        engine.close()


def test_unsupported_vllm_features_are_known_features():
    assert {key for _, key in support_matrix.VLLM.values()} == set(VLLM_FEATURES)
    for family in FAMILIES:
        assert set(dict(family.vllm.unsupported)) <= set(VLLM_FEATURES), family.name


def test_vllm_gets_the_family_template_and_switches(tmp_path, tiny_model_dir, tiny_idefics3_dir):
    paligemma = family_args(str(tiny_model_dir("paligemma")), tmp_path)
    assert paligemma[0] == "--chat-template"
    assert (tmp_path / "chat_template.jinja").read_text() == families.PALIGEMMA_CHAT_TEMPLATE
    assert family_args(str(tiny_model_dir("qwen3_5")), tmp_path) == [
        "--default-chat-template-kwargs", '{"enable_thinking": false}']
    assert family_args(str(tiny_idefics3_dir), tmp_path) == []  # it ships its own template
    assert family_args(str(tiny_model_dir("lfm2_vl")), tmp_path) == list(families.LFM2_ROPE_WORKAROUND)
