#!/usr/bin/env bash
# Upload the offline wandb runs under a folder (default: outputs/) to your wandb account.
#   wandb login            # once
#   scripts/wandb_sync.sh outputs/multirun/2026-11-27_17-31-06
set -euo pipefail
root=${1:-outputs}
mapfile -t runs < <(find "$root" -type d -name 'offline-run-*' | sort)
if [ ${#runs[@]} -eq 0 ]; then
  echo "no offline wandb runs under $root" >&2
  exit 1
fi
echo "syncing ${#runs[@]} run(s) from $root"
wandb sync "${runs[@]}"
