# Set-up and the two jobs of the README. Everything installs from this repo's own files.
#   make demo   -> the main job on the embedded default (in-process transformers backend)
#   make test   -> the whole test suite (creates the CPU vLLM venv the serving tests use and the
#                  Label Studio venv the review tests start a server from)
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# torch + torchvision pinned together: LFM2-VL's image processor needs a matching torchvision.
TORCH := torch==2.14.1 torchvision==0.29.1
CONFIG ?= configs/cats_vs_dogs.yaml
PYTEST_ARGS ?=

.PHONY: install vllm-venv labelstudio-venv chromium demo demo-offline test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

vllm-venv:
	bash scripts/setup_vllm_venv.sh

labelstudio-venv:
	bash scripts/setup_labelstudio_venv.sh

# Headless Chromium from apt for the report's browser test (idempotent; needs root or sudo).
chromium:
	bash scripts/install_chromium.sh

demo: install
	$(BIN)/vlmopt optimize $(CONFIG)

demo-offline: install
	$(BIN)/vlmopt demo --offline

test: install vllm-venv labelstudio-venv chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: install
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .venv-vllm .venv-labelstudio .pytest_cache runs .vlmopt_cache
