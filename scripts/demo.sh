#!/usr/bin/env bash
# The demo: a shadow copy through a private Samba (smbd) and our agent, on a loop btrfs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/remotevss demo "$@"
