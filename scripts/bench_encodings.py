"""Training speed of each encoding (and model setting) relative to RoPE, at the quickstart size.

    .venv/bin/python scripts/bench_encodings.py [--encodings rope alibi t5_bias kerple fire] [--repeats 5]
    .venv/bin/python scripts/bench_encodings.py --encodings fox cope irope rope+sink rope+logn rope+ssmax

An entry NAME+SETTING adds a model setting that composes with any encoding: `sink`
(model.net.sink=true) or a logit temperature rule (`logn`, `llama4`, `ssmax`:
model.net.logit_temperature). `--out FILE` also writes the table there (markdown).

One training step is forward + backward + AdamW on a (batch, context) window of random tokens,
GPT 4 layers x width 128 x 4 heads, vocab 256, context 128, batch 32 (experiment=quickstart).
Each encoding is built from conf/pos_enc/NAME.yaml as `poslab-train pos_enc=NAME` would. All
models live in one process and are timed in turn, `--steps` steps each, `--repeats` rounds after
a warm-up round, so that a slow spell on a shared machine hits every encoding alike; the table
reports the median tokens/s of the rounds and its ratio to RoPE's median.

`--clock cpu` divides by this process's CPU time instead of wall time: on a machine busy with
other jobs, wall time mostly measures the waits for a free core, CPU time the work itself. With
`--threads 1` as well, no thread spins waiting for another, so CPU time is the work alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from poslab.config import CONFIG_DIR
from poslab.config.resolvers import register_resolvers
from poslab.model import GPT

BIAS_ENCODINGS = ["alibi", "t5_bias", "kerple", "fire"]


TEMPERATURES = ("logn", "llama4", "ssmax")


def model_settings(entry: str) -> tuple[str, dict]:
    """'rope+sink+logn' -> ('rope', {'sink': True, 'logit_temperature': 'logn'})."""
    name, *settings = entry.split("+")
    chosen: dict = {}
    for setting in settings:
        if setting == "sink":
            chosen["sink"] = True
        elif setting in TEMPERATURES:
            chosen["logit_temperature"] = setting
        else:
            raise SystemExit(
                f"--encodings {entry}: unknown setting {setting!r}; allowed: sink, {', '.join(TEMPERATURES)}"
            )
    return name, chosen


def make_encoding(name: str, n_head: int, n_embd: int, context: int, n_layer: int = 4):
    """conf/pos_enc/NAME.yaml, composed into the training config as `poslab-train pos_enc=NAME` would."""
    sizes = [f"model.net.n_head={n_head}", f"model.net.n_embd={n_embd}", f"data.context={context}"]
    sizes.append(f"model.net.n_layer={n_layer}")
    register_resolvers()  # ${poslab.original_context:...}, which some encodings' configs read
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return instantiate(compose(config_name="train", overrides=[f"pos_enc={name}", *sizes]).pos_enc)


class Trainer:
    def __init__(self, name: str, args: argparse.Namespace):
        torch.manual_seed(0)
        self.name = name
        encoding, settings = model_settings(name)
        pos_enc = make_encoding(encoding, args.n_head, args.n_embd, args.context, args.n_layer)
        self.model = GPT(
            args.vocab, args.n_layer, args.n_head, args.n_embd, pos_enc=pos_enc, train_context=args.context, **settings
        ).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
        generator = torch.Generator().manual_seed(1)
        self.tokens = torch.randint(0, args.vocab, (args.batch, args.context + 1), generator=generator)
        self.pos = None
        if args.positions == "randomized":  # per-sample sorted samples from [0, 4 * context)
            samples = [torch.randperm(4 * args.context, generator=generator)[: args.context] for _ in range(args.batch)]
            self.pos = torch.stack(samples).sort(dim=-1).values

    def step(self) -> None:
        logits = self.model(self.tokens[:, :-1], self.pos)
        loss = F.cross_entropy(logits.flatten(0, 1), self.tokens[:, 1:].flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def tokens_per_second(self, steps: int, clock=time.perf_counter) -> float:
        started = clock()
        for _ in range(steps):
            self.step()
        return steps * self.tokens[:, :-1].numel() / (clock() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encodings", nargs="+", default=["rope", *BIAS_ENCODINGS])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="training steps per timed round")
    parser.add_argument("--positions", choices=["arange", "randomized"], default="arange")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()
    names = args.encodings if "rope" in args.encodings else ["rope", *args.encodings]
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)

    trainers = [Trainer(name, args) for name in names]
    lines = [
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT {args.n_layer}x{args.n_embd}, "
        f"{args.n_head} heads, vocab {args.vocab}, context {args.context}, batch {args.batch}, "
        f"positions {args.positions}; {args.steps} steps per round, median of {args.repeats} rounds, "
        f"{args.clock} clock"
    ]
    print(lines[0])
    for trainer in trainers:  # warm-up: allocator, kernels, AdamW state
        trainer.tokens_per_second(2)
    rates: dict[str, list[float]] = {trainer.name: [] for trainer in trainers}
    for _ in range(args.repeats):
        for trainer in trainers:
            rates[trainer.name].append(trainer.tokens_per_second(args.steps, clock))

    reference = statistics.median(rates["rope"])
    lines += [
        "",
        "| encoding | tokens/s (median) | min-max | vs RoPE | step time vs RoPE |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        median = statistics.median(rates[name])
        spread = f"{min(rates[name]):,.0f}-{max(rates[name]):,.0f}"
        lines.append(f"| {name} | {median:,.0f} | {spread} | {median / reference:.2f}x | {reference / median:.2f}x |")
    print("\n".join(lines[1:]))
    if args.out:
        with open(args.out, "w") as out:
            out.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
