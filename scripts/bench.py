"""Training and evaluation speed of poslab's GPT at `gpt_small`, against x-transformers.

    .venv/bin/python scripts/bench.py            # the full benchmark (about 10 minutes on 2 quiet CPU cores)
    .venv/bin/python scripts/bench.py --quick    # every code path at toy sizes, in seconds (the tests run it)

x-transformers is the `bench` extra (`pip install -e '.[bench]'`); without it the comparison
columns are empty and the rest runs. This file is the entry point; each job is a module of
scripts/benchlib/ (models, training, evaluation, machine, record).

**Training** (`benchlib.training`). One step is what the trainer does: forward,
`window_mean_loss`, backward, gradient clipping at 1.0, the optimizer of `model.optimizer` (AdamW,
nanoGPT's decay groups, `fused: auto`) and the learning-rate schedule; under bf16 autocast on CUDA
(`trainer=gpu`), float32 on a CPU. For each of the quickstart's six encodings, poslab eager, poslab compiled
(`model.compile: true`) and the x-transformers decoder of the same size and encoding
(`benchlib.models`) are built in one process and timed in turn, `--steps` steps each per round,
for `--repeats` rounds after a warm-up round (compilation happens there and is reported apart), on
the same batch of random tokens; the tables give the median tokens/s over the rounds. "poslab" is
the variant `model.compile: auto` picks on this device. On rope, the optimizer's implementation
(for-loop, foreach, fused) is timed the same way, and the whole Lightning loop (`Trainer.fit` with
the run's trainer config, logger and callbacks) against the bare step, which is the per-step
overhead of the loop.

**Where a step's time goes** (a CPU; `--no-profile` leaves it out). After the timed rounds, one
round of each encoding's 'poslab' and x-transformers steps runs under torch.profiler: the round's
wall time per step, and each op's own time summed for the kernels both call with the same shapes
(matmuls, the SDPA kernel, GELU). The measured ratio over the share of poslab's profiled step
spent in those kernels is the ceiling of the ratio: what poslab would reach if the rest of its
step were free.

**MFU.** Model FLOPs per token (`poslab.model.flops`: 6 N + 12 L T d, PaLM's appendix B) times
tokens/s, over the peak this process measures itself (`benchlib.machine`): the best of several
large square matmuls, float32 on a CPU (with the threads training uses), bf16 on CUDA.

**Evaluation** (`benchlib.evaluation`). `poslab.evaluation.protocols.score_windows` (what
`poslab-eval` runs: nonoverlapping windows, batches of `eval.batch_tokens`) on the same random
tokens at 1x, 4x, 16x and 32x the training context: tokens/s of a second pass, and the peak memory
of the first (`poslab.memory.PeakMemory`: on a CPU the peak resident set above the resident set
before scoring, on CUDA torch.cuda.max_memory_allocated above the memory allocated before). On a
CPU each (encoding, length) runs in a subprocess of its own (`--eval-worker`).

The script reports ratios without judging them; the targets are in
experiments/benchmarks/README.md ("Targets"). Writes `experiments/benchmarks/<date>_<device>.md`
and `.json` (the machine, every measurement; `--out` for another folder) and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchlib import GPT_SMALL_SIZES, QUICK_SIZES, QUICKSTART_ENCODINGS, ROOT, log  # noqa: E402
from benchlib.evaluation import eval_one, time_evaluation  # noqa: E402
from benchlib.machine import machine, matmul_peak  # noqa: E402
from benchlib.record import markdown  # noqa: E402
from benchlib.training import time_lightning, time_training  # noqa: E402


def without_out(argv: list[str]) -> list[str]:
    """The command line as recorded: where the record was written (--out) is not part of it."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return kept


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, one round: checks every path in seconds")
    parser.add_argument("--encodings", nargs="+", default=None, help=f"default: {' '.join(QUICKSTART_ENCODINGS)}")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; --quick 1)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per round (default 5; --quick 1)")
    parser.add_argument(
        "--lightning-steps", type=int, default=None, help="steps per Trainer.fit (default 20; --quick 4)"
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time poslab compiled too (default: on; off with --quick)",
    )
    parser.add_argument("--no-xt", action="store_true", help="leave x-transformers out")
    parser.add_argument("--no-lightning", action="store_true", help="leave the Lightning-loop measurement out")
    parser.add_argument(
        "--no-profile", dest="profile", action="store_false", help="leave out where a step's time goes (a CPU)"
    )
    parser.add_argument("--no-eval", action="store_true", help="leave the evaluation section out")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: this process's CPU time (a busy machine; use with --threads 1)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--out", default=str(ROOT / "experiments" / "benchmarks"), help="folder for the .md and .json")
    parser.add_argument("--eval-worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval_worker:  # (encoding, length) pairs of the evaluation section, in a process of their own
        print(json.dumps([eval_one(spec) for spec in json.loads(args.eval_worker)]))
        return 0

    args.encodings = args.encodings or QUICKSTART_ENCODINGS
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.steps = args.steps or (1 if args.quick else 5)
    args.lightning_steps = args.lightning_steps or (4 if args.quick else 20)
    args.compile = (not args.quick) if args.compile is None else args.compile
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as LitGPT.setup does for a CUDA run
    sizes = QUICK_SIZES if args.quick else GPT_SMALL_SIZES
    # a GPU works asynchronously: only the wall clock (after a synchronize) sees its time
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    started = _dt.datetime.now()
    record = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *without_out(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "device": device.type,
        "clock": "cpu (process time)" if clock is time.process_time else "wall",
        "repeats": args.repeats,
        "steps": args.steps,
        "sizes": sizes,
        "machine": machine(device, torch.get_num_threads()),
    }
    log(
        f"{device}, torch {torch.__version__}, {torch.get_num_threads()} threads; x-transformers "
        f"{record['machine']['x_transformers'] or 'not installed'}"
    )
    record["matmul_peak"] = matmul_peak(device, args.quick, clock)
    log(f"matmul peak {record['matmul_peak']['flops_per_s'] / 1e9:,.1f} GFLOP/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{started.strftime('%Y-%m-%d_%H-%M-%S')}_{device.type}{'_quick' if args.quick else ''}"

    def save(finished: bool) -> str:
        """The record so far (a killed run keeps the sections it finished: `finished` false)."""
        record["finished"] = finished
        record["machine"]["load_average_end"] = list(os.getloadavg())
        record["seconds"] = round((_dt.datetime.now() - started).total_seconds(), 1)
        text = markdown(record)
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
        stem.with_suffix(".md").write_text(text)
        return text

    record["evaluation"] = {}
    with tempfile.TemporaryDirectory(prefix="poslab-bench-") as scratch:
        record["training"], record["training_meta"] = time_training(args, device, sizes, clock, scratch)
        default = record["training_meta"]["default_variant"]
        for row in record["training"].values():
            rate = row["variants"][default]["median"]
            row["mfu"] = rate * row["flops_per_token"] / record["matmul_peak"]["flops_per_s"]
        save(finished=False)
        if not args.no_lightning and "rope" in args.encodings:
            log("Lightning loop")
            record["lightning"] = time_lightning(args, device, sizes, clock, scratch)
            save(finished=False)
        if not args.no_eval:
            record["evaluation"] = time_evaluation(args, device, sizes, scratch)
    print(save(finished=True))
    log(f"wrote {stem}.md and .json in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
