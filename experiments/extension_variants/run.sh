#!/usr/bin/env bash
# The training-free extension study, from the project root with the project's environment on PATH:
#   bash experiments/extension_variants/run.sh [OUT]          (OUT defaults to outputs/extension_variants)
# Every part writes its own folder and is skipped when its results are there: run the script again
# after a kill and the finished parts are kept.
# 1. three RoPE checkpoints at extrapolation_cpu's settings (seeds 0, 1, 2; these runs are that
#    study's rope rows), and a RoPE model trained with passkey windows (experiment=passkey)
# 2. each language-model checkpoint, seed by seed, at 1x to 32x under both protocols:
#    every rotary variant in one poslab-eval (eval.variants), then each window with sinks, then
#    log-n at evaluation alone and with the variants it is published with
# 3. the passkey checkpoint under every variant, window and log-n at 1x, 2x, 4x and 8x (passkey
#    scores one variant per run)
# 4. a report on each: the language-model scores (lm/) and the passkey scores (passkey/)
set -uo pipefail
out=${1:-outputs/extension_variants}
variants='[rope,rope_pi,rope_ntk,rope_yarn,rope_llama3,rope_longrope,rerope,leaky_rerope,self_extend]'
# 8,192 held-out bytes at every length (2 windows at 32x under nonoverlapping); sliding keeps
# extrapolation_cpu's stride of 64, so a scored byte sees at least length - 64 bytes of context
lm_eval=("eval.lengths_x=[1,2,4,8,16,32]" "eval.protocols=[nonoverlapping,sliding]" eval.stride=64
  eval.num_tokens=8192 eval.passkey.enabled=false)
passkey_eval=("eval.lengths_x=[1,2,4,8]" "eval.passkey.lengths_x=[1,2,4,8]" eval.passkey.enabled=true)
# settings beside the variants: name, then poslab-eval overrides
settings=(
  "streaming_llm eval.window.method=streaming_llm eval.window.sinks=4 eval.window.local=128"
  "lm_infinite eval.window.method=lm_infinite eval.window.sinks=4 eval.window.local=128"
  "logn eval.logit_temperature=logn"
)
start=$(date +%s)
status=0
score() {  # $1: folder, then poslab-eval overrides
  local folder=$1
  shift
  [ -f "$folder/results.json" ] && return 0
  local t0
  t0=$(date +%s)
  poslab-eval "$@" logger=csv hydra.run.dir="$folder" || status=1
  echo "$folder: $(( $(date +%s) - t0 )) s"
}

poslab-train -m experiment=extrapolation_cpu pos_enc=rope seed=0,1,2 logger=csv \
  hydra.sweep.dir="$out/train" || status=1
poslab-train experiment=passkey pos_enc=rope logger=csv hydra.run.dir="$out/train_passkey" || status=1

for seed in 0 1 2; do
  checkpoint=$(ls "$out"/train/*_rope_s"$seed"/checkpoints/last.ckpt 2>/dev/null | head -1)
  [ -n "$checkpoint" ] || { echo "no checkpoint for seed $seed"; status=1; continue; }
  score "$out/lm/s${seed}_variants" ckpt_path="$checkpoint" "eval.variants=$variants" "${lm_eval[@]}"
  for setting in "${settings[@]}"; do
    read -r -a words <<< "$setting"
    score "$out/lm/s${seed}_${words[0]}" ckpt_path="$checkpoint" "${words[@]:1}" "${lm_eval[@]}"
  done
  # ReRoPE's and Self-Extend's reference code scales the queries by log-n; YaRN brings its own
  score "$out/lm/s${seed}_logn_variants" ckpt_path="$checkpoint" eval.logit_temperature=logn \
    "eval.variants=[rerope,self_extend]" "${lm_eval[@]}"
done

checkpoint=$out/train_passkey/checkpoints/last.ckpt
for variant in ${variants//[\[\],]/ }; do
  score "$out/passkey/$variant" ckpt_path="$checkpoint" pos_enc="$variant" "${passkey_eval[@]}"
done
for setting in "${settings[@]}"; do
  read -r -a words <<< "$setting"
  score "$out/passkey/rope_${words[0]}" ckpt_path="$checkpoint" "${words[@]:1}" "${passkey_eval[@]}"
done

poslab-report "$out/lm" --html || status=1
poslab-report "$out/passkey" --html || status=1
echo "total $(( $(date +%s) - start )) s (exit $status)"
exit $status
