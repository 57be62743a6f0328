"""The jobs of scripts/bench.py, one module each: the models compared (`models`), training speed
(`training`), evaluation speed and memory (`evaluation`), the machine and its matmul peak
(`machine`), and the markdown record (`record`). Here: what they share."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
# the entry point: the evaluation workers are started through it (`--eval-worker`)
BENCH_SCRIPT = Path(__file__).resolve().parents[1] / "bench.py"
QUICKSTART_ENCODINGS = ["nope", "sinusoidal", "learned", "rope", "rope_pi", "alibi"]
EVAL_LENGTHS_X = [1, 4, 16, 32]
QUICK_SIZES = {"n_layer": 1, "n_head": 2, "n_embd": 32, "context": 16, "batch": 4}
GPT_SMALL_SIZES = {"n_layer": 4, "n_head": 4, "n_embd": 128, "context": 128, "batch": 32}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
