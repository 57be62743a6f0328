"""Evaluation cost of each training-free extension method relative to plain RoPE, at 32x the context.

    .venv/bin/python scripts/bench_extension.py [--length-x 32] [--repeats 3] [--clock cpu --threads 1]

One no-grad forward of the quickstart GPT (4 layers x width 128 x 4 heads, vocab 256, context 128)
over one window of `--length-x` times the context, as poslab-eval scores it (the model's own
attention path: SDPA with is_causal for RoPE and the scalings, the chunked path for the
remappings, the windowed path for eval.window). Entries:

    NAME                    conf/pos_enc/NAME.yaml (rope, rope_yarn, rerope, leaky_rerope, self_extend, ...)
    NAME+streaming_llm      with eval.window (sinks 4, local = the context), StreamingLLM's positions
    NAME+lm_infinite        the same window, LM-Infinite's capped distances
    NAME+logn               with eval.logit_temperature=logn

All models live in one process and are timed in turn, round after round, so that a slow spell
hits every entry alike; the table gives the median seconds per forward and its ratio to RoPE's,
and each entry's peak memory above the process's at the start of its forward. `--out FILE` also
writes the table there (markdown).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_encodings import make_encoding

from poslab.memory import PeakMemory
from poslab.model import GPT
from poslab.model.window import WINDOW_METHODS, AttentionWindow

DEFAULT = [
    "rope",
    "rope_yarn",
    "rope_longrope",
    "rerope",
    "leaky_rerope",
    "self_extend",
    "rope+logn",
    "rope+streaming_llm",
    "rope+lm_infinite",
    "alibi",
    "alibi+streaming_llm",
]


def build(entry: str, args) -> GPT:
    name, *settings = entry.split("+")
    torch.manual_seed(0)
    pos_enc = make_encoding(name, args.n_head, args.n_embd, args.context, args.n_layer)
    model = GPT(args.vocab, args.n_layer, args.n_head, args.n_embd, pos_enc=pos_enc, train_context=args.context)
    for setting in settings:
        if setting in WINDOW_METHODS:
            model.window = AttentionWindow(sinks=4, local=args.context, method=setting, cap=args.context)
        elif setting == "logn":
            model.logit_temperature = "logn"
        else:
            raise SystemExit(f"{entry}: unknown setting {setting!r}; allowed: {', '.join(WINDOW_METHODS)}, logn")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", nargs="+", default=DEFAULT)
    parser.add_argument("--length-x", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    entries = args.entries if "rope" in args.entries else ["rope", *args.entries]
    length = args.length_x * args.context
    models = {entry: build(entry, args) for entry in entries}
    idx = torch.randint(0, args.vocab, (1, length), generator=torch.Generator().manual_seed(1))

    peaks = {}
    with torch.no_grad():
        for entry, model in models.items():  # warm-up, and the peak memory of one forward
            with PeakMemory("cpu") as peak:
                model(idx)
            peaks[entry] = peak.bytes
        seconds: dict[str, list[float]] = {entry: [] for entry in entries}
        for _ in range(args.repeats):
            for entry, model in models.items():
                started = clock()
                model(idx)
                seconds[entry].append(clock() - started)

    reference = statistics.median(seconds["rope"])
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT {args.n_layer}x{args.n_embd}, "
        f"{args.n_head} heads, context {args.context}; one forward of {length} tokens ({args.length_x}x), "
        f"median of {args.repeats} rounds, {args.clock} clock",
        "",
        "| entry | s per forward (median) | min-max | vs RoPE | peak memory (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for entry in entries:
        median = statistics.median(seconds[entry])
        spread = f"{min(seconds[entry]):.2f}-{max(seconds[entry]):.2f}"
        lines.append(f"| {entry} | {median:.2f} | {spread} | {median / reference:.2f}x | {peaks[entry] / 2**20:.0f} |")
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
