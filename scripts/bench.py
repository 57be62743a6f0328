"""Training and evaluation speed of poslab's GPT at `gpt_small`, against x-transformers.

    .venv/bin/python scripts/bench.py            # the full benchmark (about 10 minutes on 2 quiet CPU cores)
    .venv/bin/python scripts/bench.py --quick    # every code path at toy sizes, in seconds (the tests run it)

x-transformers is the `bench` extra (`pip install -e '.[bench]'`); without it the comparison
columns are empty and the rest runs.

**Training.** One step is what the trainer does: forward, `window_mean_loss`, backward, gradient
clipping at 1.0, the optimizer of `model.optimizer` (AdamW, nanoGPT's decay groups, `fused: auto`)
and the learning-rate schedule; under bf16 autocast on CUDA (`trainer=gpu`), float32 on a CPU.
For each mission encoding, poslab eager, poslab compiled (`model.compile: true`) and the
x-transformers decoder of the same size and encoding are built in one process and timed in turn,
`--steps` steps each per round, for `--repeats` rounds after a warm-up round (compilation
happens there and is reported apart), on the same batch of random tokens; the tables give the
median tokens/s over the rounds. "poslab" is the variant `model.compile: auto` picks on this
device. On rope, the optimizer's implementation (for-loop, foreach, fused) is timed the same way,
and the whole Lightning loop (`Trainer.fit` with the run's trainer config, logger and callbacks)
against the bare step, which is the per-step overhead of the loop.

**Where a step's time goes** (a CPU; `--no-profile` leaves it out). After the timed rounds, one
round of each encoding's 'poslab' and x-transformers steps runs under torch.profiler: the round's
wall time per step, and each op's own time summed for the kernels both call with the same shapes
(matmuls, the SDPA kernel, GELU). The measured ratio over the share of poslab's profiled step
spent in those kernels is the ceiling of the ratio: what poslab would reach if the rest of its
step were free.

**MFU.** Model FLOPs per token as in the PaLM paper's appendix B (and nanoGPT's estimate_mfu):
6 N + 12 L T d, with N the weights that take part in a matmul for every token (the blocks'
linear layers and the output head, tied to the embedding; not the embedding lookup, LayerNorms
or position tables), L layers, T the training context, d the width; the second term is
attention's scores and weighted sum, counted without the causal half. Divided by the peak this
process measures itself: the best of several large square matmuls, float32 on a CPU (with the
threads training uses), bf16 on CUDA.

**Evaluation.** `poslab.evaluate.score_windows` (what `poslab-eval` runs: nonoverlapping
windows, batches of `eval.batch_tokens`) on the same random tokens at 1x, 4x, 16x and 32x the
training context: tokens/s of a second pass, and the peak memory of the first. On a CPU each
(encoding, length) runs in a subprocess of its own, and the peak is its peak resident set (VmHWM,
restarted before scoring) above its resident set then; on CUDA, torch.cuda.max_memory_allocated
above the memory allocated before.

Writes `experiments/benchmarks/<date>_<device>.md` and `.json` (the machine, every measurement;
`--out` for another folder) and prints the markdown.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
MISSION_ENCODINGS = ["nope", "sinusoidal", "learned", "rope", "rope_pi", "alibi"]
BIAS_ENCODINGS = {"alibi", "t5_bias", "kerple", "fire"}
EVAL_LENGTHS_X = [1, 4, 16, 32]
# Targets of the issue, for a CPU: training throughput against x-transformers, MFU, and the bias
# encodings against RoPE.
TARGET_VS_XT, TARGET_MFU, TARGET_BIAS_VS_ROPE = 1.2, 0.5, 0.8
# AdamW's implementations besides `fused: auto`
OPTIMIZER_VARIANTS = [
    ("AdamW for-loop", {"fused": False, "foreach": False}),
    ("AdamW foreach", {"fused": False, "foreach": True}),
    ("AdamW fused", {"fused": True}),
]
QUICK_SIZES = {"n_layer": 1, "n_head": 2, "n_embd": 32, "context": 16, "batch": 4}
# Where a step's time goes (a CPU): each op's own time under torch.profiler, by name prefix. Both
# implementations call these kernels with the same shapes, so poslab's time in them alone bounds
# how far anything poslab does differently can take its ratio to x-transformers.
SHARED_KERNELS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention kernel": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention"),
    "GELU": ("aten::gelu",),
}


# --- the models --------------------------------------------------------------------------------


def compose_train_config(encoding: str, sizes: dict, device: torch.device, output_dir: str):
    """conf/train.yaml with pos_enc=NAME at these sizes, as `poslab-train` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from poslab.config import CONFIG_DIR

    overrides = [
        f"pos_enc={encoding}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        "logger=csv",
        f"paths.output_dir={output_dir}",
        f"model.net.n_layer={sizes['n_layer']}",
        f"model.net.n_head={sizes['n_head']}",
        f"model.net.n_embd={sizes['n_embd']}",
        f"data.context={sizes['context']}",
        f"data.batch_size={sizes['batch']}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def poslab_model(cfg):
    """The LightningModule poslab-train builds (its .model is the GPT)."""
    from poslab.lit import LitGPT

    return LitGPT(cfg.model.net, cfg.pos_enc, cfg.model.optimizer, cfg.model.scheduler)


# How each encoding is spelled in x-transformers. Its decoder: pre-LayerNorm blocks, separate
# q/k/v projections, a 4x GELU feed-forward, no biases (ff_no_bias), tied embeddings and SDPA
# (attn_flash), rotary over the whole head as poslab's (rotary_emb_dim; its default is half).
# x-transformers has no fixed sinusoid: scaled_sinu_pos_emb is one with a learned scale. rope_pi
# within its training context is RoPE. T5's bias is not supported by its SDPA path.
def xt_encoding(encoding: str, head_dim: int, n_head: int) -> tuple[dict, dict] | None:
    """(Decoder keywords, TransformerWrapper keywords) for `encoding`, or None."""
    no_abs = {"use_abs_pos_emb": False}
    return {
        "nope": ({}, no_abs),
        "sinusoidal": ({}, {"scaled_sinu_pos_emb": True}),
        "learned": ({}, {}),
        "rope": ({"rotary_pos_emb": True, "rotary_emb_dim": head_dim}, no_abs),
        "rope_pi": ({"rotary_pos_emb": True, "rotary_emb_dim": head_dim}, no_abs),
        "alibi": ({"alibi_pos_bias": True, "alibi_num_heads": n_head}, no_abs),
        "t5_bias": ({"rel_pos_bias": True, "attn_flash": False}, no_abs),
    }.get(encoding)


def x_transformers_version() -> str | None:
    try:
        return importlib.metadata.version("x-transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def xt_model(encoding: str, sizes: dict, vocab: int):
    """x-transformers' decoder at poslab's size with `encoding`, or None (not installed, or no
    counterpart)."""
    if x_transformers_version() is None:
        return None
    spelling = xt_encoding(encoding, sizes["n_embd"] // sizes["n_head"], sizes["n_head"])
    if spelling is None:
        return None
    from x_transformers import Decoder, TransformerWrapper

    decoder_kwargs, wrapper_kwargs = spelling
    decoder = Decoder(
        dim=sizes["n_embd"],
        depth=sizes["n_layer"],
        heads=sizes["n_head"],
        attn_dim_head=sizes["n_embd"] // sizes["n_head"],
        ff_no_bias=True,
        **{"attn_flash": True, **decoder_kwargs},
    )
    return TransformerWrapper(
        num_tokens=vocab, max_seq_len=sizes["context"], attn_layers=decoder, tie_embedding=True, **wrapper_kwargs
    )


def matmul_parameters(model: torch.nn.Module) -> int:
    """Weights of the nn.Linear layers, each counted once (the tied output head included)."""
    seen = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)}
    return sum(seen.values())


def flops_per_token(model: torch.nn.Module, n_layer: int, n_embd: int, context: int) -> int:
    """PaLM appendix B: 6 N + 12 L T d (N: matmul weights; forward and backward)."""
    return 6 * matmul_parameters(model) + 12 * n_layer * context * n_embd


# --- timing ------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, quick: bool, clock=time.perf_counter) -> dict:
    """FLOP/s of the best of several large square matmuls: float32 on a CPU, bf16 on CUDA."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 256 if quick else (8192 if device.type == "cuda" else 2048)
    calls = 2 if quick else (50 if device.type == "cuda" else 5)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = 0.0
    for _ in range(3 if quick else 7):
        synchronize(device)
        started = clock()
        for _ in range(calls):
            a @ b
        synchronize(device)
        best = max(best, calls * 2 * size**3 / (clock() - started))
    return {"flops_per_s": best, "dtype": str(dtype).removeprefix("torch."), "size": size}


class Stepper:
    """One model's training step as the trainer runs it, on a fixed batch."""

    def __init__(self, model, forward, optimizer_cfg: dict, scheduler_cfg: dict, tokens, device, total_steps: int):
        from poslab.lit import build_optimizer, warmup_cosine

        self.model = model.to(device).train()
        self.forward = forward or self.model
        self.device = device
        self.optimizer = build_optimizer(self.model.parameters(), optimizer_cfg)
        warmup = min(int(scheduler_cfg["warmup_steps"]), max(1, total_steps - 1))
        floor = float(scheduler_cfg["min_lr_ratio"])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: warmup_cosine(step, warmup, total_steps, floor)
        )
        self.x, self.y = tokens[:, :-1].to(device), tokens[:, 1:].to(device)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(self) -> None:
        from poslab.lit import window_mean_loss

        with self.autocast:
            loss = window_mean_loss(self.forward(self.x), self.y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def tokens_per_second(self, steps: int, clock) -> float:
        synchronize(self.device)
        started = clock()
        for _ in range(steps):
            self.step()
        synchronize(self.device)
        return steps * self.x.numel() / (clock() - started)


def summary(rates: list[float]) -> dict:
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "rounds": rates}


def time_training(args, device, sizes, clock, output_dir: str) -> tuple[dict, dict]:
    """Every (encoding, variant) in turn, round after round. Returns (rows, meta)."""
    from poslab.lit import COMPILE_OPTIONS, compile_enabled

    generator = torch.Generator().manual_seed(1)
    steppers: dict[tuple[str, str], Stepper] = {}
    rows: dict[str, dict] = {}
    total = (args.repeats + 1) * args.steps + 2
    default_compiled = compile_enabled("auto", device)
    tokens = None
    for encoding in args.encodings:
        cfg = compose_train_config(encoding, sizes, device, output_dir)
        if tokens is None:
            vocab = int(cfg.model.net.vocab_size)
            tokens = torch.randint(0, vocab, (sizes["batch"], sizes["context"] + 1), generator=generator)
        optimizer_cfg = dict(cfg.model.optimizer)
        scheduler_cfg = dict(cfg.model.scheduler)
        torch.manual_seed(0)
        eager = poslab_model(cfg).model
        rows[encoding] = {
            "parameters": eager.num_parameters(),
            "matmul_parameters": matmul_parameters(eager),
            "flops_per_token": flops_per_token(eager, sizes["n_layer"], sizes["n_embd"], sizes["context"]),
            "variants": {},
        }
        steppers[(encoding, "poslab eager")] = Stepper(eager, None, optimizer_cfg, scheduler_cfg, tokens, device, total)
        if args.compile:
            torch.manual_seed(0)
            compiled = poslab_model(cfg).model.to(device)
            forward = torch.compile(compiled.forward, **COMPILE_OPTIONS)
            steppers[(encoding, "poslab compiled")] = Stepper(
                compiled, forward, optimizer_cfg, scheduler_cfg, tokens, device, total
            )
        torch.manual_seed(0)
        reference = None if args.no_xt else xt_model(encoding, sizes, vocab)
        if reference is not None:
            rows[encoding]["xt_parameters"] = sum(p.numel() for p in reference.parameters())
            steppers[(encoding, "x-transformers")] = Stepper(
                reference, None, optimizer_cfg, scheduler_cfg, tokens, device, total
            )
        if encoding == "rope":  # the optimizer's other implementations, on the eager model
            for name, choice in OPTIMIZER_VARIANTS:
                torch.manual_seed(0)
                steppers[(encoding, f"poslab eager, {name}")] = Stepper(
                    poslab_model(cfg).model, None, {**optimizer_cfg, **choice}, scheduler_cfg, tokens, device, total
                )

    compile_seconds = {}
    for (encoding, variant), stepper in steppers.items():  # warm-up: kernels, allocator, AdamW state, compilation
        started = time.perf_counter()
        stepper.tokens_per_second(2, time.perf_counter)
        if variant == "poslab compiled":
            compile_seconds[encoding] = time.perf_counter() - started
    log(f"warm-up done; {args.repeats} rounds of {args.steps} steps over {len(steppers)} models")
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in steppers}
    for round_index in range(args.repeats):
        for key, stepper in steppers.items():
            rates[key].append(stepper.tokens_per_second(args.steps, clock))
        log(f"round {round_index + 1}/{args.repeats}")
    for (encoding, variant), values in rates.items():
        rows[encoding]["variants"][variant] = summary(values)
        if variant == "poslab compiled":
            rows[encoding]["variants"][variant]["compile_s"] = compile_seconds[encoding]
    default = "poslab compiled" if default_compiled and args.compile else "poslab eager"
    meta = {"default_variant": default, "compile_auto_here": default_compiled}
    if args.profile and device.type == "cpu":
        log("profiling a step of each implementation")
        for (encoding, variant), stepper in steppers.items():
            if variant in (default, "x-transformers"):
                rows[encoding]["variants"][variant]["profiled"] = kernel_times(stepper, args.steps)
    del steppers
    return rows, meta


def kernel_times(stepper: Stepper, steps: int) -> dict:
    """`steps` steps under torch.profiler: their wall time per step, and the milliseconds per step
    in each group of SHARED_KERNELS (the ops' own, self, CPU time), both in ms."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        started = time.perf_counter()
        for _ in range(steps):
            stepper.step()
        step_ms = (time.perf_counter() - started) * 1000 / steps
    groups = dict.fromkeys(SHARED_KERNELS, 0.0)
    for event in profiler.key_averages():
        for group, prefixes in SHARED_KERNELS.items():
            if event.key.startswith(prefixes):
                groups[group] += event.self_cpu_time_total / 1000 / steps
                break
    return {"step_ms": step_ms, "kernels_ms": groups}


def time_lightning(args, device, sizes, clock, output_dir: str) -> dict:
    """RoPE through Trainer.fit (the run's trainer config, CSV logger, the run's callbacks) and
    through the bare step, alternately; the difference is the loop's per-step overhead."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from pytorch_lightning.loggers import CSVLogger

    from poslab.lit import COMPILE_OPTIONS

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    cfg = compose_train_config("rope", sizes, device, output_dir)
    vocab = int(cfg.model.net.vocab_size)
    tokens = torch.randint(0, vocab, (sizes["batch"], sizes["context"] + 1), generator=torch.Generator().manual_seed(1))
    batch = (tokens[:, :-1], tokens[:, 1:])
    steps = args.lightning_steps

    class StepTimes(pl.Callback):
        def __init__(self):
            self.starts: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            synchronize(device)
            self.starts.append(clock())

    rounds_fit, rounds_bare = [], []
    for _ in range(2 if args.quick else 3):
        torch.manual_seed(0)
        lit = poslab_model(cfg)
        timer = StepTimes()
        callbacks = [instantiate(c) for c in cfg.callbacks.values() if c and "_target_" in c]
        trainer: pl.Trainer = instantiate(
            cfg.trainer,
            logger=CSVLogger(output_dir, name="csv", version=f"round-{len(rounds_fit)}"),
            callbacks=[*callbacks, timer],
            max_steps=steps + 1,
            val_check_interval=steps + 1,
            limit_val_batches=0,
            enable_model_summary=False,
        )
        loader = torch.utils.data.DataLoader([batch] * (steps + 1), batch_size=None)
        trainer.fit(lit, train_dataloaders=loader)
        warm = 2  # the first intervals hold set-up and compilation
        intervals = np.diff(timer.starts)[warm:]
        rounds_fit.append(sizes["batch"] * sizes["context"] / float(np.median(intervals)))

        torch.manual_seed(0)
        model = poslab_model(cfg).model
        forward = torch.compile(model.forward, **COMPILE_OPTIONS) if lit._train_forward is not None else None
        optimizer_cfg, scheduler_cfg = dict(cfg.model.optimizer), dict(cfg.model.scheduler)
        bare = Stepper(model, forward, optimizer_cfg, scheduler_cfg, tokens, device, steps + 4)
        bare.tokens_per_second(2, clock)
        rounds_bare.append(bare.tokens_per_second(max(1, steps - warm), clock))
    fit, bare = summary(rounds_fit), summary(rounds_bare)
    return {
        "encoding": "rope",
        "compiled": lit._train_forward is not None,
        "trainer_fit": fit,
        "bare_step": bare,
        "overhead": bare["median"] / fit["median"] - 1.0,
        "steps_per_fit": steps,
    }


# --- evaluation --------------------------------------------------------------------------------


def eval_one(spec: dict) -> dict:
    """Score `spec["num_tokens"]` random tokens at one length; runs in its own process on a CPU."""
    from hydra.utils import instantiate

    from poslab.encodings import LengthNotSupportedError
    from poslab.evaluate import score_windows

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

    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        score()
        peak = torch.cuda.max_memory_allocated(device) - before
        how = "torch.cuda.max_memory_allocated"
    else:
        before, how = resident_mark()
        score()
        peak = max(0, resident_peak(how) - before)  # nothing new: the resident set moved by a few pages
    seconds = score()
    return {
        "status": "ok",
        "tokens_per_s": spec["num_tokens"] / seconds,
        "peak_bytes": int(peak),
        "memory_measure": how,
    }


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # kB
    raise OSError(f"no {key} in /proc/self/status")


def resident_mark() -> tuple[int, str]:
    """Restart the peak resident set from the current one; returns (current bytes, how the peak is
    read). ru_maxrss alone would not do: it starts at the parent's resident set at the fork that
    made this process (Linux keeps it across exec), which a bench full of models easily exceeds."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to VmRSS
        return _proc_status_bytes("VmRSS"), "VmHWM"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"


def resident_peak(how: str) -> int:
    if how == "VmHWM":
        return _proc_status_bytes("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
    command = [sys.executable, str(Path(__file__).resolve()), "--eval-worker", json.dumps(specs)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["?"])[-1]
        return [{"status": "failed", "reason": reason} for _ in specs]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the record --------------------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> dict:
    from poslab.results import git_state

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
        "torch": torch.__version__,
        "torch_threads": threads,
        "device": str(device),
        "x_transformers": x_transformers_version(),
        "git": git_state(ROOT),
        "load_average_start": list(os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def _rate(entry: dict | None) -> str:
    if not entry:
        return "—"
    return f"{entry['median']:,.0f} ({entry['min']:,.0f}-{entry['max']:,.0f})"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def _mark(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _bytes(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.1f} MiB"


def markdown(record: dict) -> str:
    m, sizes, peak = record["machine"], record["sizes"], record["matmul_peak"]
    default = record["training_meta"]["default_variant"]
    lines = [
        f"# poslab speed, {record['started']}" + ("" if record["finished"] else " (unfinished: sections missing)"),
        "",
        f"Machine: {m['cpu']}, {m['cpu_count']} CPUs"
        + (f", {m['gpu']} (CUDA {m['cuda']})" if m.get("gpu") else "")
        + f"; torch {m['torch']}, {m['torch_threads']} threads; "
        f"x-transformers {m['x_transformers'] or 'not installed'}; "
        f"git {(m['git'].get('commit') or '?')[:10]}{' (dirty)' if m['git'].get('dirty') else ''}; "
        f"load average {m['load_average_start'][0]:.2f} at the start, {m['load_average_end'][0]:.2f} at the end.",
        "",
        f"Model: {sizes['n_layer']} layers, width {sizes['n_embd']}, {sizes['n_head']} heads, context "
        f"{sizes['context']}, batch {sizes['batch']}{' (--quick sizes)' if record['quick'] else ' (gpt_small)'}. "
        f"Clock: {record['clock']}. {record['repeats']} rounds of {record['steps']} steps, median (min-max) tokens/s. "
        f"Matmul peak: {peak['flops_per_s'] / 1e9:,.1f} GFLOP/s ({peak['dtype']}, {peak['size']}^2). "
        f"'poslab' below is `{default}` (what `model.compile: auto` runs here).",
        "",
        "## Training",
        "",
        "| encoding | poslab eager | poslab compiled (compile s) | x-transformers | poslab / x-transformers "
        "| eager / x-transformers | MFU | vs RoPE |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    training = record["training"]
    rope = training.get("rope", {}).get("variants", {}).get(default, {}).get("median")
    for encoding, row in training.items():
        v = row["variants"]
        ours, xt = v.get(default, {}).get("median"), v.get("x-transformers", {}).get("median")
        compiled = v.get("poslab compiled")
        compiled_text = f"{_rate(compiled)} ({compiled['compile_s']:.0f} s)" if compiled else "—"
        lines.append(
            f"| {encoding} | {_rate(v.get('poslab eager'))} | {compiled_text} | {_rate(v.get('x-transformers'))} "
            f"| {_ratio(ours, xt)} | {_ratio(v['poslab eager']['median'], xt)} | {row['mfu']:.0%} "
            f"| {_ratio(ours, rope)} |"
        )
    lines += [
        "",
        f"MFU: model FLOPs per token 6 N + 12 L T d = {next(iter(training.values()))['flops_per_token']:,} "
        "(PaLM appendix B; N the matmul weights incl. the tied head) x tokens/s of 'poslab', over the matmul peak.",
        "",
        *kernel_table(record),
        "## Targets (for a CPU)",
        "",
        "| target | result |",
        "|---|---|",
    ]
    for name, ok, detail in record["targets"]:
        lines.append(f"| {name} | {_mark(ok)} {detail} |")
    options = training.get("rope", {}).get("variants", {})
    lines += [
        "",
        "## What each option gives (rope)",
        "",
        "| variant | tokens/s | vs poslab eager (the default) |",
        "|---|---:|---:|",
    ]
    base = options.get("poslab eager", {}).get("median")
    default_optimizer = "fused" if record.get("device", "cpu").startswith("cuda") else "torch's default, not fused"
    names = ("poslab eager, AdamW for-loop", "poslab eager, AdamW foreach", "poslab eager, AdamW fused")
    for name in (*names, "poslab eager", "poslab compiled"):
        if name in options:
            default = f"poslab eager (the default: fused: auto, AdamW {default_optimizer})"
            label = default if name == "poslab eager" else name
            lines.append(f"| {label} | {_rate(options[name])} | {_ratio(options[name]['median'], base)} |")
    lightning = record.get("lightning")
    if lightning:
        lines += [
            "",
            f"Lightning's loop (`Trainer.fit`, the run's trainer config, CSV logger, the run's callbacks; "
            f"{'compiled' if lightning['compiled'] else 'eager'}): {_rate(lightning['trainer_fit'])} tokens/s against "
            f"{_rate(lightning['bare_step'])} for the bare step: {lightning['overhead']:+.1%} per step.",
        ]
    lines += [
        "",
        "## Evaluation (nonoverlapping windows, eval.batch_tokens per batch)",
        "",
        "| encoding | " + " | ".join(f"{x}x tokens/s | {x}x peak memory" for x in EVAL_LENGTHS_X) + " |",
        "|---|" + "---:|---:|" * len(EVAL_LENGTHS_X),
    ]
    for encoding, by_length in record["evaluation"].items():
        cells = []
        for x in EVAL_LENGTHS_X:
            cell = by_length[f"{x}x"]
            if cell["status"] == "ok":
                cells += [f"{cell['tokens_per_s']:,.0f}", _bytes(cell["peak_bytes"])]
            else:
                cells += [cell["status"], "—"]
        lines.append(f"| {encoding} | " + " | ".join(cells) + " |")
    memory = (
        "the worker's peak resident set (VmHWM) above its resident set before scoring"
        + (", one worker for all lengths (--quick)" if record["quick"] else "")
        if record["device"] == "cpu"
        else "torch.cuda.max_memory_allocated"
    )
    lengths = ", ".join(str(x * sizes["context"]) for x in EVAL_LENGTHS_X)
    lines += ["", f"Lengths {lengths}; peak memory: {memory}.", ""]
    return "\n".join(lines)


def kernel_table(record: dict) -> list[str]:
    """The markdown of where a step's time goes, and the ratio to x-transformers poslab would reach
    if everything but the shared kernels cost nothing. Empty when nothing was profiled."""
    sizes, peak = record["sizes"], record["matmul_peak"]["flops_per_s"]
    tokens = sizes["batch"] * sizes["context"]
    default = record["training_meta"]["default_variant"]
    lines, ceilings = [], []
    for encoding, row in record["training"].items():
        matmul_flops = 6 * row["matmul_parameters"] * tokens  # the linear layers; attention's are in its kernel
        variants = row["variants"]
        for variant in (default, "x-transformers"):
            if "profiled" not in variants.get(variant, {}):
                continue
            step_ms, kernels = variants[variant]["profiled"]["step_ms"], variants[variant]["profiled"]["kernels_ms"]
            rest = step_ms - sum(kernels.values())
            gflops = matmul_flops / (kernels["matmul"] / 1000) / 1e9 if kernels["matmul"] else float("nan")
            name = "poslab" if variant == default else variant
            lines.append(
                f"| {encoding} | {name} | {step_ms:.1f} | "
                + " | ".join(f"{kernels[group]:.1f}" for group in SHARED_KERNELS)
                + f" | {rest:.1f} | {gflops:,.0f} ({gflops * 1e9 / peak:.0%}) |"
            )
        if "profiled" in variants.get(default, {}) and "x-transformers" in variants:
            ours = variants[default]["profiled"]
            shared_fraction = sum(ours["kernels_ms"].values()) / ours["step_ms"]
            ratio = variants[default]["median"] / variants["x-transformers"]["median"]
            ceilings.append(f"{encoding} {ratio / shared_fraction:.2f}x ({shared_fraction:.0%} in them)")
    if not lines:
        return []
    return [
        "## Where a step's time goes",
        "",
        "Milliseconds per training step, one round of steps under torch.profiler: the step's wall time, "
        "and each op's own time summed by kernel. Both implementations call these kernels with the same "
        "shapes; 'everything else' is the rest of the step (LayerNorm, embedding, loss, optimizer, Python, "
        "the profiler's own cost). Matmul GFLOP/s: the linear layers' 6 N FLOPs per token over the matmul "
        "time, against the measured peak.",
        "",
        "| encoding | implementation | step | " + " | ".join(SHARED_KERNELS) + " | everything else | matmul GFLOP/s |",
        "|---|---|" + "---:|" * (len(SHARED_KERNELS) + 3),
        *lines,
        "",
        "Ceiling of poslab / x-transformers: the measured ratio over the share of poslab's profiled step "
        "spent in these kernels, i.e. the ratio if everything else in its step cost nothing: "
        + (", ".join(ceilings) or "—")
        + ".",
        "",
    ]


def targets(record: dict) -> list[tuple[str, bool | None, str]]:
    training, default = record["training"], record["training_meta"]["default_variant"]
    rope = training.get("rope", {}).get("variants", {}).get(default, {}).get("median")
    out, vs_xt = [], []
    name = f">= {TARGET_VS_XT}x x-transformers, every mission encoding"
    for encoding in MISSION_ENCODINGS:
        v = training.get(encoding, {}).get("variants", {})
        if default in v and "x-transformers" in v:
            vs_xt.append((encoding, v[default]["median"] / v["x-transformers"]["median"]))
    if vs_xt:
        worst = min(vs_xt, key=lambda item: item[1])
        ok = all(r >= TARGET_VS_XT for _, r in vs_xt)
        out.append((name, ok, f"lowest {worst[0]} {worst[1]:.2f}x"))
    else:
        out.append((name, None, "x-transformers not measured"))
    mfus = [(e, r["mfu"]) for e, r in training.items() if e in MISSION_ENCODINGS]
    if mfus:
        worst = min(mfus, key=lambda item: item[1])
        ok = all(m >= TARGET_MFU for _, m in mfus)
        out.append((f">= {TARGET_MFU:.0%} MFU", ok, f"lowest {worst[0]} {worst[1]:.0%}"))
    bias = [(e, r["variants"][default]["median"] / rope) for e, r in training.items() if e in BIAS_ENCODINGS and rope]
    if bias:
        worst = min(bias, key=lambda item: item[1])
        ok = all(r >= TARGET_BIAS_VS_ROPE for _, r in bias)
        out.append((f"bias encodings >= {TARGET_BIAS_VS_ROPE}x RoPE", ok, f"lowest {worst[0]} {worst[1]:.2f}x"))
    return out


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="toy sizes, one round: checks every path in seconds")
    parser.add_argument("--encodings", nargs="+", default=None, help=f"default: {' '.join(MISSION_ENCODINGS)}")
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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.eval_worker:  # (encoding, length) pairs of the evaluation section, in a process of their own
        print(json.dumps([eval_one(spec) for spec in json.loads(args.eval_worker)]))
        return 0

    args.encodings = args.encodings or MISSION_ENCODINGS
    args.repeats = args.repeats or (1 if args.quick else 5)
    args.steps = args.steps or (1 if args.quick else 5)
    args.lightning_steps = args.lightning_steps or (4 if args.quick else 20)
    args.compile = (not args.quick) if args.compile is None else args.compile
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as LitGPT.setup does for a CUDA run
    sizes = QUICK_SIZES if args.quick else {"n_layer": 4, "n_head": 4, "n_embd": 128, "context": 128, "batch": 32}
    # a GPU works asynchronously: only the wall clock (after a synchronize) sees its time
    clock = time.process_time if args.clock == "cpu" and device.type == "cpu" else time.perf_counter
    started = _dt.datetime.now()
    record = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
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
        record["targets"] = targets(record)
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
