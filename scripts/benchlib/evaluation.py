"""Evaluation speed and peak memory per length: `poslab.evaluation.protocols.score_windows` at
1x..32x the training context. On a CPU each (encoding, length) is scored by a worker process of
its own: `python scripts/bench.py --eval-worker JSON`, JSON a list of specs (see
`time_evaluation`); the worker prints the list of results as one line of JSON on stdout."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import torch

from poslab.memory import PeakMemory

from . import BENCH_SCRIPT, EVAL_LENGTHS_X, log, synchronize
from .models import compose_train_config


def eval_one(spec: dict) -> dict:
    """Score `spec["num_tokens"]` random tokens at one length; runs in its own process on a CPU."""
    from hydra.utils import instantiate

    from poslab.encodings import LengthNotSupportedError
    from poslab.evaluation.protocols import score_windows

    device = torch.device(spec["device"])
    torch.manual_seed(0)
    model = instantiate(spec["net"], pos_enc=instantiate(spec["pos_enc"])).to(device).eval()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, spec["net"]["vocab_size"], spec["num_tokens"] + 1)
    length = spec["length"]
    try:
        model.pos_enc.check_length(length)
    except LengthNotSupportedError as error:
        return {"status": "unsupported", "reason": str(error)}

    clock = time.process_time if spec.get("clock") == "cpu" and device.type == "cpu" else time.perf_counter

    def score() -> float:
        synchronize(device)
        started = clock()
        score_windows(model, tokens, length, length, spec["batch_tokens"], device)
        synchronize(device)
        return clock() - started

    with PeakMemory(device) as peak:  # the first pass: its peak memory
        score()
    seconds = score()  # the second: its speed
    return {
        "status": "ok",
        "tokens_per_s": spec["num_tokens"] / seconds,
        "peak_bytes": int(peak.bytes),
        "memory_measure": peak.measure,
    }


def time_evaluation(args, device, sizes, output_dir: str) -> dict:
    """Every encoding at every length. On a CPU each (encoding, length) is a worker process of its
    own, so that its resident set is its own; with --quick one worker scores them all (a smoke
    test of the path: each peak is then only what that length added to the worker's peak)."""
    from omegaconf import OmegaConf

    lengths = [x * sizes["context"] for x in EVAL_LENGTHS_X]
    specs = []
    for encoding in args.encodings:
        cfg = compose_train_config(encoding, sizes, device, output_dir)
        for length, factor in zip(lengths, EVAL_LENGTHS_X, strict=True):
            specs.append(
                {
                    "encoding": encoding,
                    "factor": factor,
                    "net": OmegaConf.to_container(cfg.model.net, resolve=True),
                    "pos_enc": OmegaConf.to_container(cfg.pos_enc, resolve=True),
                    "length": length,
                    "num_tokens": 2 * max(lengths),  # every length scores the same tokens
                    "batch_tokens": int(cfg.eval.batch_tokens),
                    "device": str(device),
                    "clock": args.clock,
                }
            )
    if device.type == "cuda":
        results = [eval_one(spec) for spec in specs]
    elif args.quick:
        results = eval_in_subprocess(specs, args.threads)
    else:
        results = []
        for spec in specs:
            results += eval_in_subprocess([spec], args.threads)
            if spec["factor"] == EVAL_LENGTHS_X[-1]:
                log(f"evaluated {spec['encoding']}")
    rows: dict[str, dict] = {}
    for spec, result in zip(specs, results, strict=True):
        rows.setdefault(spec["encoding"], {})[f"{spec['factor']}x"] = {"eval_length": spec["length"], **result}
    return rows


def eval_in_subprocess(specs: list[dict], threads: int | None) -> list[dict]:
    """`specs` scored by `scripts/bench.py --eval-worker` in a process of its own."""
    command = [sys.executable, str(BENCH_SCRIPT), "--eval-worker", json.dumps(specs)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        return [{"status": "failed", "reason": reason} for _ in specs]
    return json.loads(done.stdout.strip().splitlines()[-1])
