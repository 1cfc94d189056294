#!/usr/bin/env bash
# Create the Label Studio venv (.venv-labelstudio) that tests/test_review_label_studio.py starts a
# real Label Studio server from, on loopback.  label-studio pins Django and many packages of its
# own, so it lives apart from .venv (which only needs label-studio-sdk, the client).
# Idempotent: does nothing when label_studio of the wanted version already imports.
#
# Usage: scripts/setup_labelstudio_venv.sh [VENV_DIR]     (default: <repo>/.venv-labelstudio)
# Env:   PYTHON (interpreter used to create the venv, default python3.11)
#        LABEL_STUDIO_VERSION (default 1.23.2)
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo_root/.venv-labelstudio}"
python="${PYTHON:-python3.11}"
version="${LABEL_STUDIO_VERSION:-1.23.2}"

# Importing the package is enough: `label-studio --version` would set up Django and migrate a database.
ready_check="import importlib.metadata as m; assert m.version('label-studio') == '$version', m.version('label-studio')
import label_studio.server"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$ready_check" >/dev/null 2>&1; then
    echo "Label Studio venv ready: $venv"
    exit 0
fi

echo "Creating Label Studio venv at $venv (label-studio==$version)"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "label-studio==$version"
"$venv/bin/python" -c "$ready_check"
echo "Label Studio venv ready: $venv"
