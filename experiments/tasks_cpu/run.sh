#!/usr/bin/env bash
# The algorithmic-task study, from the project root with the project's environment on PATH:
#   bash experiments/tasks_cpu/run.sh [OUT [TASK ...]]
# OUT defaults to outputs/tasks_cpu, the tasks to copy sort reverse (the ones the recipe makes
# learnable: experiments/tasks_cpu/calibration.md). Every part is a
# sweep into its own folder: run the script again after a kill and the finished jobs are kept.
# 1. per task: 9 encodings x seeds 0, 1, 2 at the task's recipe (experiment=tasks_cpu), then
#    that task's RoPE checkpoints under the rotary scaling variants (poslab-eval eval.variants),
#    straight away, so a part that ends with its task needs no checkpoint kept for later
# 2. randomized positions (Ruoss et al. 2023) for rope, nope and alibi on the first two tasks
# 3. one report over everything
set -uo pipefail
out=${1:-outputs/tasks_cpu}
shift || true
tasks=("${@:-copy sort reverse}")
read -r -a tasks <<< "${tasks[*]}"
variants='[rope,rope_pi,rope_ntk,rope_yarn,rope_llama3]'
start=$(date +%s)
status=0
score_rope_checkpoints() {  # $1: a sweep folder
  for checkpoint in "$1"/*_rope_s*/checkpoints/last.ckpt; do
    [ -f "$checkpoint" ] || continue
    run=$(basename "$(dirname "$(dirname "$checkpoint")")")
    folder="$out/variants/$(basename "$1")_$run"
    [ -f "$folder/results.json" ] && continue
    poslab-eval ckpt_path="$checkpoint" "eval.variants=$variants" hydra.run.dir="$folder" || status=1
  done
}
for task in "${tasks[@]}"; do
  t0=$(date +%s)
  poslab-train -m experiment=tasks_cpu task="$task" hydra.sweep.dir="$out/$task" || status=1
  score_rope_checkpoints "$out/$task"
  echo "$task: $(( $(date +%s) - t0 )) s"
done
for task in "${tasks[@]:0:2}"; do
  t0=$(date +%s)
  # 256 positions cover the longest test sequence of these tasks at 4x (81 tokens; associative recall 161)
  poslab-train -m experiment=tasks_cpu task="$task" 'pos_enc=rope,nope,alibi' \
    data.positions=randomized data.max_position=256 hydra.sweep.dir="$out/${task}_randomized" || status=1
  echo "$task, randomized positions: $(( $(date +%s) - t0 )) s"
done
poslab-report "$out" --html || status=1
echo "total $(( $(date +%s) - start )) s (exit $status)"
exit $status
