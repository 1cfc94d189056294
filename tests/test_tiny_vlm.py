"""The tiny VLM fixtures load and generate through the same path users run (Auto* from_pretrained)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3Processor,
    Lfm2VlConfig,
    Lfm2VlForConditionalGeneration,
    Lfm2VlProcessor,
)

from vlmopt.testing.tiny_vlm import build_tiny_vlm, main

# arch -> (fixture, config class, model class, processor class, text model_type, image tokens per 64px image)
ARCHS = {
    "lfm2_vl": ("tiny_lfm2_vl_dir", Lfm2VlConfig, Lfm2VlForConditionalGeneration, Lfm2VlProcessor, "lfm2", 16),
    "idefics3": ("tiny_idefics3_dir", Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor, "llama", 16),
}
MAX_PARAMS = 1_000_000  # lfm2_vl: 615,616; idefics3: 750,784


@pytest.fixture(params=sorted(ARCHS))
def arch_dir(request) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(ARCHS[request.param][0])


def _load(model_dir: Path):
    return AutoProcessor.from_pretrained(model_dir), AutoModelForImageTextToText.from_pretrained(model_dir)


def _chat(image: Image.Image, question: str) -> list[dict]:
    return [
        {"role": "system", "content": [{"type": "text", "text": "Be concise."}]},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]},
    ]


def test_unknown_arch_error_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match="idefics3, internvl, lfm2_vl"):
        build_tiny_vlm("not_a_family", tmp_path)


def test_real_architecture_and_tiny_sizes(arch_dir):
    arch, model_dir = arch_dir
    _, config_cls, model_cls, processor_cls, text_type, _ = ARCHS[arch]
    processor, model = _load(model_dir)
    assert type(model) is model_cls and type(model.config) is config_cls and type(processor) is processor_cls
    assert model.config.model_type == arch
    assert model.config.architectures == [model_cls.__name__]
    text = model.config.text_config
    assert text.model_type == text_type
    assert text.head_dim == text.hidden_size // text.num_attention_heads == 64
    assert text.vocab_size == len(processor.tokenizer)
    assert 1000 <= len(processor.tokenizer) <= 4096
    assert sum(p.numel() for p in model.parameters()) < MAX_PARAMS


def test_standard_files_for_vllm(arch_dir):
    _, model_dir = arch_dir
    for name in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "processor_config.json"]:
        assert (model_dir / name).is_file(), name
    config = json.loads((model_dir / "config.json").read_text())
    assert config["dtype"] == "float32" and "auto_map" not in config
    tokenizer = AutoProcessor.from_pretrained(model_dir).tokenizer
    generation = json.loads((model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    assert generation["pad_token_id"] == tokenizer.pad_token_id
    assert generation["bos_token_id"] == tokenizer.bos_token_id
    assert json.loads((model_dir / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_tokenizer_keeps_special_and_json_tokens_whole(arch_dir):
    _, model_dir = arch_dir
    processor = AutoProcessor.from_pretrained(model_dir)
    tokenizer = processor.tokenizer
    for token in [processor.image_token, tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token]:
        assert tokenizer.tokenize(token) == [token]
    answer = '{"label": "cat"}'
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert len(ids) <= 8  # trained merges, not one token per byte
    assert tokenizer.decode(ids) == answer


def test_chat_template_renders_roles_images_and_generation_prompt(arch_dir):
    _, model_dir = arch_dir
    processor = AutoProcessor.from_pretrained(model_dir)
    image = Image.new("RGB", (64, 64), "red")
    messages = _chat(image, "Is this a cat or a dog?") + [
        {"role": "assistant", "content": [{"type": "text", "text": '{"label": "cat"}'}]}]
    closed = processor.apply_chat_template(messages, tokenize=False)
    for text in ["Be concise.", "Is this a cat or a dog?", '{"label": "cat"}']:
        assert text in closed
    assert closed.count(processor.image_token) == 1
    assert closed.index(processor.image_token) < closed.index("Is this a cat or a dog?")
    assert closed.lower().index("system") < closed.lower().index("user") < closed.lower().index("assistant")
    asked = processor.apply_chat_template(messages[:2], tokenize=False)
    prompted = processor.apply_chat_template(messages[:2], add_generation_prompt=True, tokenize=False)
    assert prompted.startswith(asked) and "assistant" in prompted[len(asked):].lower()
    assert "assistant" not in asked.lower()


def test_generate_single_chat_with_image(arch_dir):
    arch, model_dir = arch_dir
    processor, model = _load(model_dir)
    inputs = processor.apply_chat_template(
        _chat(Image.new("RGB", (64, 64), "blue"), "Which shape is shown?"),
        add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == ARCHS[arch][5]
    output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 4)
    assert isinstance(processor.decode(output[0, -4:], skip_special_tokens=True), str)


def test_batched_generation_left_pads_and_matches_unbatched(arch_dir):
    _, model_dir = arch_dir
    processor, model = _load(model_dir)
    long_chat = _chat(Image.new("RGB", (64, 64), "red"), "Is this a cat or a dog? Answer with one word.")
    short_chat = _chat(Image.new("RGB", (64, 64), "green"), "Shape?")
    template_kwargs = {"add_generation_prompt": True, "tokenize": True, "return_dict": True, "return_tensors": "pt"}
    batch = processor.apply_chat_template([long_chat, short_chat], processor_kwargs={"padding": True},
                                          **template_kwargs)
    alone = processor.apply_chat_template(short_chat, **template_kwargs)
    mask = batch["attention_mask"]
    assert mask[0].all() and mask[1, 0] == 0 and mask[1, -1] == 1  # shorter row padded on the left
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits[1, -1], model(**alone).logits[0, -1],
                                   atol=1e-4, rtol=1e-4)
    batched = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    single = model.generate(**alone, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert batched.shape == (2, mask.shape[1] + 3)
    assert torch.equal(batched[1, -3:], single[0, -3:])


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    first = load_file(build_tiny_vlm("idefics3", tmp_path / "a", seed=1) / "model.safetensors")
    again = load_file(build_tiny_vlm("idefics3", tmp_path / "b", seed=1) / "model.safetensors")
    other = load_file(build_tiny_vlm("idefics3", tmp_path / "c", seed=2) / "model.safetensors")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "c" / "tokenizer.json").read_text()


def test_cli_writes_loadable_checkpoint(tmp_path, capsys):
    main(["--arch", "lfm2_vl", "--out", str(tmp_path / "cli")])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    processor, model = _load(tmp_path / "cli")
    assert model.config.model_type == "lfm2_vl" and type(processor) is Lfm2VlProcessor
