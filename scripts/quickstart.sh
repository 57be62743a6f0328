#!/usr/bin/env bash
# The main job: the six encodings on the embedded corpus, then the report (make quickstart).
# Extra arguments go to poslab-train, e.g. scripts/quickstart.sh seed=1
set -euo pipefail
start=$(date +%s)
poslab-train -m experiment=quickstart "$@"
echo "quickstart finished in $(( $(date +%s) - start )) s; the report is in the newest outputs/multirun/*/report.md"
