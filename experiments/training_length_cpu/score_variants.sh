# Sourced by this folder's run.sh and by experiments/lm_converged/run.sh, which share the five
# parts of two encodings and their check:
declare -A encodings=([1]=rope,alibi [2]=nope,sinusoidal [3]=t5_bias,kerple [4]=xpos,irope [5]=fox,cope)
#   check_parts PART ...    exits 2 on a part that is not 1 to 5, before anything runs
check_parts() {
  local part
  for part in "$@"; do
    [ -n "${encodings[$part]:-}" ] || { echo "unknown part $part: allowed 1 2 3 4 5"; exit 2; }
  done
}
# And score every RoPE
# checkpoint of a sweep folder under the zero-shot rotary variants, with the axis's own scoring
# settings (experiment=training_length_cpu's: poslab-eval's defaults are others), one folder per
# checkpoint; a checkpoint already scored is kept. Sets status=1 where a scoring fails.
#   score_rope_variants SWEEP_FOLDER VARIANTS_FOLDER
score_rope_variants() {
  local sweep=$1 into=$2 checkpoint run folder
  local variants='[rope_pi,rope_ntk,rope_yarn,rope_llama3]'
  local axis_eval=("eval.protocols=[nonoverlapping,sliding]" eval.stride=64 eval.num_tokens=16384
    eval.passkey.enabled=false)
  for checkpoint in "$sweep"/*_rope_*/checkpoints/last.ckpt; do
    [ -f "$checkpoint" ] || continue
    run=$(basename "$(dirname "$(dirname "$checkpoint")")")
    folder="$into/$run"
    [ -f "$folder/results.json" ] && continue
    poslab-eval ckpt_path="$checkpoint" "eval.variants=$variants" "${axis_eval[@]}" logger=csv \
      hydra.run.dir="$folder" || status=1
  done
}
