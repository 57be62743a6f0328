"""How a training step runs fast on each device, and its schedule: AdamW over nanoGPT's two groups
(fused on CUDA), warmup + cosine, and torch.compile of the training forward (CUDA by default).

What each of these gave at `gpt_small` is measured by scripts/bench.py (experiments/benchmarks/).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from hydra.utils import instantiate


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine decay to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# torch.compile's keyword arguments (a test gives a counting backend: the same wiring without
# Inductor's compilation time)
COMPILE_OPTIONS: dict[str, Any] = {}


def compile_enabled(setting: Any, device: torch.device | str) -> bool:
    """Whether `model.compile` (true, false or auto) compiles the training forward on `device`.

    auto compiles on CUDA only: on a CPU the compiled GPT was no faster per step at gpt_small
    (0.95-1.03x eager, scripts/bench.py) and compiling takes 20 s or more at the start of a run."""
    if setting == "auto":
        return torch.device(device).type == "cuda"
    if setting is True or setting is False:
        return setting
    raise ValueError(f"model.compile must be true, false or auto, got {setting!r}")


def fused_adamw_supported(device: torch.device | str) -> bool:
    """Where `fused: auto` takes torch's fused AdamW kernel: CUDA only. torch has a CPU kernel too
    (from 2.4), but at gpt_small it gave about 1 percent (scripts/bench.py) and it rounds
    differently from the loop, which would move every recorded CPU result in its last digits;
    `fused: true` asks for it."""
    return torch.device(device).type == "cuda"


def build_optimizer(parameters, optimizer: dict) -> torch.optim.Optimizer:
    """The optimizer of `model.optimizer` (a `_partial_` config) over nanoGPT's two groups: decay
    matrices (2-D), not biases, LayerNorm gains or other 1-D parameters. `fused: auto` takes
    torch's fused kernel where the parameters' device has one (one kernel for all tensors instead
    of a loop over them; the same update up to rounding); true or false force it, null leaves
    torch's default."""
    params = [p for p in parameters if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = dict(optimizer)
    fused = optimizer.pop("fused", None)
    if fused == "auto":
        fused = bool(params) and fused_adamw_supported(params[0].device)
    kwargs = {} if fused is None else {"fused": bool(fused)}
    return instantiate(optimizer)(groups, **kwargs)
