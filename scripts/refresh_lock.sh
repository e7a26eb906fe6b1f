#!/usr/bin/env bash
# Rewrite requirements-lock.txt: the exact versions of a fresh environment that passes the tests.
#
#   git clone <repo> /tmp/fresh && cd /tmp/fresh
#   PNEUMO_LOCK=none ./setup.sh            # resolve from pyproject.toml's floors, no lock
#   .venv/bin/python -m pytest -q          # the suite must pass with what was resolved
#   scripts/refresh_lock.sh                # freeze it; commit requirements-lock.txt
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# The exact environment the test suite passed with: a pip constraints file."
  echo "# Used by setup.sh and environment.yml; refresh with scripts/refresh_lock.sh."
  echo "# $(.venv/bin/python --version), $(uname -m), written $(date -u +%Y-%m-%d)"
  .venv/bin/pip freeze --exclude-editable | grep -viE '^(pneumolib|ruff)[= ]'
} > requirements-lock.txt
echo "wrote requirements-lock.txt ($(grep -vc '^#' requirements-lock.txt) packages)"
