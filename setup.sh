#!/usr/bin/env bash
# Set up (or update) the project's virtual environment in .venv, idempotently, with the exact
# versions CI passed with (requirements-lock.txt, a pip constraints file; refresh it with
# scripts/refresh_lock.sh). torch is pinned here too, to the build these machines install from a
# local cache; on other machines pip fetches it. Override with TORCH_SPEC="torch==X torchvision==Y"
# (torch's own lines of the lock are then dropped) and skip the lock with PNEUMO_LOCK=none.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
DEFAULT_TORCH="torch==2.14.1 torchvision==0.29.1"
TORCH_SPEC=${TORCH_SPEC:-$DEFAULT_TORCH}
LOCK=${PNEUMO_LOCK:-requirements-lock.txt}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
CONSTRAINTS=()
if [ "$LOCK" != "none" ]; then
  if [ "$TORCH_SPEC" != "$DEFAULT_TORCH" ]; then
    # another torch: its CUDA libraries and torchvision differ too
    grep -viE '^(torch|torchvision|triton|nvidia-|cuda-)' "$LOCK" > .venv/constraints-without-torch.txt
    LOCK=.venv/constraints-without-torch.txt
  fi
  CONSTRAINTS=(-c "$LOCK")
fi
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q --upgrade pip
  # shellcheck disable=SC2086
  .venv/bin/pip install -q "${CONSTRAINTS[@]}" $TORCH_SPEC
fi
.venv/bin/pip install -q "${CONSTRAINTS[@]}" -e ".[dev]"
# papermill runs notebooks with the kernel named python3: make it this environment's python
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "pneumolib (.venv)" >/dev/null
echo "setup.sh: environment ready in .venv"
