#!/usr/bin/env bash
# The GPU checks in one command, for a bare CUDA machine with no network (Python 3.12, torch,
# Lightning and numpy installed; Hydra, OmegaConf, wandb, datasets, pytest, x-transformers not).
#
#   bash scripts/gpu_check.sh --prepare [WHEELHOUSE]   here, with the package index: fills .whl/
#   bash scripts/gpu_check.sh [OUT_DIR]                 there, from the repository root, .whl/ beside it
#
# --prepare runs WHEELHOUSE (default ../shared/gpu/wheelhouse.sh: Hydra, OmegaConf, wandb,
# datasets and their needs) and adds the wheels of pytest and of the bench extra (x-transformers).
# On the GPU machine it installs from .whl/ what is missing (offline, into $HOME/site), then runs,
# each step under a time limit, everything written under OUT_DIR ($OUT, else experiments/gpu/<date>):
#   1. env.txt       nvidia-smi, torch, CUDA
#   2. pytest.log    the GPU tests, tests/integration/test_gpu.py (bf16 training of every quickstart encoding,
#                    compiled flex attention against the materialised bias, gpt_small at 32 x 512)
#   3. train/        the quickstart's six encodings trained briefly with trainer=gpu (bf16,
#                    model.compile auto = compiled) and scored at 1x to 32x; report.md; no checkpoints
#   4. bench/        scripts/bench.py: training tokens/s against x-transformers, MFU against the
#                    bf16 matmul peak, evaluation tokens/s and peak memory at 1x-32x
# summary.txt has one line per step; the exit status is 1 if a step failed. About 8 minutes.
set -uo pipefail

# the bench extra and pytest, as pinned in development (pure-Python wheels)
EXTRA_WHEELS=(
  x-transformers==2.31.10 einops==0.8.2 einx==0.4.3 loguru==0.7.3 frozendict==2.5.1 torch-einops-utils==0.2.0
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pygments==2.21.0
)
NEEDED_MODULES="hydra omegaconf antlr4 wandb datasets pytest x_transformers"

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
  sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 0
fi

if [[ "${1:-}" == "--prepare" ]]; then
  set -e
  cd "$(git rev-parse --show-toplevel)"
  bash "${2:-../shared/gpu/wheelhouse.sh}"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${EXTRA_WHEELS[@]}"
  du -sh .whl
  echo "ready: run 'bash scripts/gpu_check.sh \"\$OUT\"' on the GPU machine with .whl/ carried along"
  exit 0
fi

out=${1:-${OUT:-experiments/gpu/$(date +%Y-%m-%d_%H-%M-%S)}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
summary="$out/summary.txt"
: > "$summary"
failed=0

# --- what is missing, from .whl/ (offline) ---
missing=$(python3 -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $NEEDED_MODULES)
if [[ -n "$missing" ]]; then
  if ! ls .whl/*.whl > /dev/null 2>&1; then
    echo "missing: $missing; and no .whl/ here: run 'bash scripts/gpu_check.sh --prepare' where the package index is" \
      | tee -a "$summary"
    exit 2
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$HOME/site" .whl/*.whl \
    > "$out/install.log" 2>&1 || { echo "install from .whl/: failed (install.log)" | tee -a "$summary"; exit 2; }
  echo "installed from .whl/ for: $missing" | tee -a "$summary"
fi
export PYTHONPATH="$HOME/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export POSLAB_DATA_CACHE
POSLAB_DATA_CACHE=$(mktemp -d)  # the corpus's token cache stays out of OUT_DIR

# step NAME SECONDS COMMAND...: run with a time limit, its output in NAME.log, a line in summary.txt
step() {
  local name=$1 limit=$2 started=$SECONDS status rc
  shift 2
  echo "[gpu_check $(date +%H:%M:%S)] $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124|137) status="timed out after ${limit} s"; failed=1 ;;
    *) status="failed (exit $rc)"; failed=1 ;;
  esac
  echo "$name: $status in $((SECONDS - started)) s ($name.log)" | tee -a "$summary"
}

{
  nvidia-smi || true
  python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())"
  python3 -c "import pytorch_lightning as pl; print('lightning', pl.__version__)"
  python3 -c "import x_transformers, importlib.metadata as m; print('x-transformers', m.version('x-transformers'))"
  git rev-parse HEAD 2> /dev/null || true
} > "$out/env.txt" 2>&1

step pytest 150 python3 -m pytest -q -p no:cacheprovider tests/integration/test_gpu.py
step train 180 python3 -m poslab train -m experiment=quickstart trainer=gpu logger=csv \
  trainer.max_steps=100 trainer.val_check_interval=100 'eval.lengths_x=[1,2,4,8,16,32]' \
  "hydra.sweep.dir=$out/train"
find "$out/train" -name '*.ckpt' -delete 2> /dev/null
step bench 120 python3 scripts/bench.py --repeats 3 --steps 10 --out "$out/bench"

echo "everything is under $out"
exit $failed
