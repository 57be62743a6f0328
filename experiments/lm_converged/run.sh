#!/usr/bin/env bash
# The converged study, from the project root with the project's environment on PATH:
#   bash experiments/lm_converged/run.sh [OUT [PART ...]]
# OUT defaults to outputs/lm_converged; PART is 1 to 5 (default all), each a resumable sweep of
# experiment=lm_converged over two encodings, seeds 1 and 2, into its own folder (about 35
# minutes on 2 cores; part 5, with CoPE, about 50):
#   1 rope alibi    2 nope sinusoidal    3 t5_bias kerple    4 xpos irope    5 fox cope
# Seed 0 is the training-length axis's run at the same step count, which has the same config:
# its recorded results.json is copied into OUT/seed0/ (SEED0=train trains it here instead, in
# the part's sweep). RoPE's checkpoints are then scored under the rotary variants, and the axis's
# record of its seed-0 checkpoint under them copied beside. Run the script again after a kill:
# finished jobs are kept. Then one report over everything in OUT.
set -uo pipefail
out=${1:-outputs/lm_converged}
shift || true
parts=("${@:-1 2 3 4 5}")
read -r -a parts <<< "${parts[*]}"
# the step count is the experiment's; the axis's record of seed 0 is read at that count
steps=$(sed -n 's/^ *trainer\.max_steps: *\([0-9][0-9]*\).*/\1/p' conf/experiment/lm_converged.yaml)
axis=experiments/training_length_cpu/runs
seeds=1,2
[ "${SEED0:-copy}" = train ] && seeds=0,1,2
source experiments/training_length_cpu/score_variants.sh
check_parts "${parts[@]}"
start=$(date +%s)
status=0
for part in "${parts[@]}"; do
  if [ "$seeds" = 1,2 ]; then
    for encoding in ${encodings[$part]//,/ }; do
      recorded=$(ls "$axis"/part*_[0-9]*_"${encoding}_${steps}steps_s0.json" 2>/dev/null | head -1)
      if [ -z "$recorded" ]; then
        echo "no recorded seed 0 of $encoding at $steps steps in $axis: run its axis part first, or SEED0=train"
        status=1
        continue
      fi
      mkdir -p "$out/seed0/$encoding" && cp "$recorded" "$out/seed0/$encoding/results.json"
      if [ "$encoding" = rope ]; then
        for variant in "$axis"/variants_*_rope_"${steps}"steps_s0.json; do
          [ -f "$variant" ] || continue
          mkdir -p "$out/seed0/variants" && cp "$variant" "$out/seed0/variants/results.json"
        done
      fi
    done
  fi
  t0=$(date +%s)
  poslab-train -m experiment=lm_converged "pos_enc=${encodings[$part]}" "seed=$seeds" logger=csv \
    hydra.sweep.dir="$out/part$part" || status=1
  echo "part $part (${encodings[$part]}): $(( $(date +%s) - t0 )) s"
  score_rope_variants "$out/part$part" "$out/variants"
done
poslab-report "$out" --html || status=1
echo "total $(( $(date +%s) - start )) s (exit $status)"
exit $status
