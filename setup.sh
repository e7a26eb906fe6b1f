#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv, idempotently.
# torch is pinned here (not in pyproject.toml) to the build these machines install from a local
# cache; on other machines pip fetches it. Override with TORCH_SPEC="torch==X torchvision==Y".
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # shellcheck disable=SC2086
  .venv/bin/pip install -q $TORCH_SPEC
fi
.venv/bin/pip install -q -e ".[dev]"
# papermill runs notebooks with the kernel named python3: make it this environment's python
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "pneumolib (.venv)" >/dev/null
echo "setup.sh: environment ready in .venv"
