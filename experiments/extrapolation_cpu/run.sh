#!/usr/bin/env bash
# The recorded study, from the project root with the project's environment on PATH:
#   bash experiments/extrapolation_cpu/run.sh [OUT]        (OUT defaults to outputs/extrapolation_cpu)
# 1. every encoding x seeds 0,1,2, both protocols, per-position loss, passkey at chance (no mix)
# 2. passkey retrieval: RoPE and ALiBi trained with data.passkey_mix=0.5 for 2,000 steps
# 3. the length-dependent attention temperatures (logn, llama4, ssmax) on RoPE, NoPE and ALiBi,
#    x seeds 0,1,2, the same settings otherwise (experiment=attention_settings)
# 4. one report over the three sweeps
# A sweep folder that already holds a job's results.json for the same config reuses it.
set -uo pipefail
out=${1:-outputs/extrapolation_cpu}
start=$(date +%s)
poslab-train -m experiment=extrapolation_cpu logger=csv hydra.sweep.dir="$out/lm"
lm=$?
t1=$(date +%s)
poslab-train -m experiment=passkey 'pos_enc=rope,alibi' 'eval.protocols=[nonoverlapping,sliding]' \
  eval.stride=64 eval.num_tokens=16384 'eval.lengths_x=[1,2,4,8,16]' logger=csv hydra.sweep.dir="$out/passkey"
pk=$?
t2=$(date +%s)
poslab-train -m experiment=attention_settings logger=csv hydra.sweep.dir="$out/attention_settings"
temperature=$?
t3=$(date +%s)
poslab-report "$out" --html
echo "language-model sweep: $(( t1 - start )) s (exit $lm); passkey sweep: $(( t2 - t1 )) s (exit $pk);" \
  "attention settings: $(( t3 - t2 )) s (exit $temperature); total $(( t3 - start )) s"
