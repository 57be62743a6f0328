#!/usr/bin/env bash
# The training-length axis, from the project root with the project's environment on PATH:
#   bash experiments/training_length_cpu/run.sh [OUT [PART ...]]
# OUT defaults to outputs/training_length_cpu; PART is 1 to 5 (default all), each a resumable sweep
# of experiment=training_length_cpu (200, 500, 1000 and 2000 steps, seed 0) over two or three
# encodings into its own folder, about 30 to 45 minutes on 2 cores:
#   1 rope alibi    2 nope sinusoidal    3 t5_bias kerple    4 xpos irope    5 fox cope
# Run the script again after a kill: finished jobs are kept. After part 1, RoPE's checkpoints are
# scored under the rotary variants (poslab-eval eval.variants), one folder per step count. Then one
# report over everything done so far.
set -uo pipefail
out=${1:-outputs/training_length_cpu}
shift || true
parts=("${@:-1 2 3 4 5}")
read -r -a parts <<< "${parts[*]}"
source "$(dirname "$0")/score_variants.sh"
check_parts "${parts[@]}"
start=$(date +%s)
status=0
for part in "${parts[@]}"; do
  t0=$(date +%s)
  poslab-train -m experiment=training_length_cpu "pos_enc=${encodings[$part]}" logger=csv \
    hydra.sweep.dir="$out/part$part" || status=1
  echo "part $part (${encodings[$part]}): $(( $(date +%s) - t0 )) s"
  score_rope_variants "$out/part$part" "$out/variants"
done
poslab-report "$out" --html || status=1
echo "total $(( $(date +%s) - start )) s (exit $status)"
exit $status
