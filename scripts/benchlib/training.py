"""Training speed: the trainer's step on a fixed batch (`Stepper`), every (encoding, variant)
timed round after round, where a step's time goes (`kernel_times`, a CPU), and the whole Lightning
loop against the bare step."""

from __future__ import annotations

import logging
import statistics
import time

import numpy as np
import torch

from poslab.model.flops import flops_per_token, matmul_parameters

from . import log, synchronize
from .models import RoPEThroughAutograd, compose_train_config, poslab_model, xt_model

# AdamW's implementations besides `fused: auto`
OPTIMIZER_VARIANTS = [
    ("AdamW for-loop", {"fused": False, "foreach": False}),
    ("AdamW foreach", {"fused": False, "foreach": True}),
    ("AdamW fused", {"fused": True}),
]
# RoPE's tables computed in every layer and its rotation differentiated by autograd (timed beside
# poslab's RoPE, and profiled)
ROPE_PER_LAYER = "poslab eager, RoPE per layer through autograd"
# Profiled rounds per model (median of each figure): one round is too noisy on a shared machine
PROFILE_ROUNDS = 3
# Where a step's time goes (a CPU): each op's own time under torch.profiler, by name prefix. Both
# implementations call these kernels with the same shapes, so poslab's time in them alone bounds
# how far anything poslab does differently can take its ratio to x-transformers.
SHARED_KERNELS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention kernel": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient_attention"),
    "GELU": ("aten::gelu",),
}


class Stepper:
    """One model's training step as the trainer runs it, on a fixed batch."""

    def __init__(self, model, forward, optimizer_cfg: dict, scheduler_cfg: dict, tokens, device, total_steps: int):
        from poslab.training.optim import build_optimizer, warmup_cosine

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
        from poslab.training.losses import window_mean_loss

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
    from poslab.training.optim import COMPILE_OPTIONS, compile_enabled

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
            torch.manual_seed(0)
            per_layer = poslab_model(cfg).model
            RoPEThroughAutograd.wrap(per_layer.pos_enc)
            steppers[(encoding, ROPE_PER_LAYER)] = Stepper(
                per_layer, None, optimizer_cfg, scheduler_cfg, tokens, device, total
            )

    compile_seconds = {}
    for (encoding, variant), stepper in steppers.items():  # warm-up: kernels, allocator, AdamW state, compilation
        started = time.perf_counter()
        stepper.tokens_per_second(2, time.perf_counter)
        if variant == "poslab compiled":
            compile_seconds[encoding] = time.perf_counter() - started
    log(f"warm-up done; {args.repeats} rounds of {args.steps} steps over {len(steppers)} models")
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in steppers}
    order = list(steppers)
    for round_index in range(args.repeats):
        # every other round in reverse: each model runs as often right before as right after its
        # neighbours, so a machine that speeds up or slows down during a round favours none of them
        for key in order if round_index % 2 == 0 else reversed(order):
            rates[key].append(steppers[key].tokens_per_second(args.steps, clock))
        log(f"round {round_index + 1}/{args.repeats}")
    for (encoding, variant), values in rates.items():
        rows[encoding]["variants"][variant] = summary(values)
        if variant == "poslab compiled":
            rows[encoding]["variants"][variant]["compile_s"] = compile_seconds[encoding]
    default = "poslab compiled" if default_compiled and args.compile else "poslab eager"
    for encoding, row in rows.items():
        # the ratio round by round: a model and its x-transformers counterpart run next to each
        # other in every round, so the round's ratio cancels what the machine did in between
        if (encoding, "x-transformers") in rates:
            ours, theirs = rates[(encoding, default)], rates[(encoding, "x-transformers")]
            row["ratio_to_x_transformers"] = summary([a / b for a, b in zip(ours, theirs, strict=True)])
    meta = {"default_variant": default, "compile_auto_here": default_compiled}
    if args.profile and device.type == "cpu":
        log("profiling a step of each implementation")
        profiled = [key for key in steppers if key[1] in (default, "x-transformers", ROPE_PER_LAYER)]
        rounds = 1 if args.quick else PROFILE_ROUNDS
        times: dict[tuple[str, str], list[dict]] = {key: [] for key in profiled}
        for round_index in range(rounds):  # interleaved, every other round in reverse, as the timed rounds
            for key in profiled if round_index % 2 == 0 else reversed(profiled):
                times[key].append(kernel_times(steppers[key], args.steps))
        for (encoding, variant), measured in times.items():
            rows[encoding]["variants"][variant]["profiled"] = median_profile(measured)
    del steppers
    return rows, meta


def median_profile(measured: list[dict]) -> dict:
    """The median over profiled rounds of the step time and of each kernel group's time."""
    return {
        "step_ms": statistics.median(m["step_ms"] for m in measured),
        "kernels_ms": {group: statistics.median(m["kernels_ms"][group] for m in measured) for group in SHARED_KERNELS},
        "rounds": len(measured),
    }


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

    from poslab.training.optim import COMPILE_OPTIONS

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
