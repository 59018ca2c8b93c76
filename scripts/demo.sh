#!/usr/bin/env bash
# The demo: a full FSRVP shadow-copy sequence against a real agent on a loop btrfs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/remotevss demo "$@"
