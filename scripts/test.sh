#!/usr/bin/env bash
# Runs every check remotevss has: lint, types, and the whole pytest suite
# (unit, system tests on real loop filesystems, interop with Samba's tools).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/ruff check src tests bench
.venv/bin/mypy
.venv/bin/lint-imports  # layering contracts in pyproject.toml (DESIGN.md "Layers")
exec .venv/bin/python -m pytest "$@"
