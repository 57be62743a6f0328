"""LightningModule around the GPT: next-token loss, AdamW with warmup + cosine, logging; and how
a training step runs fast on each device (`model.compile`, fused AdamW, TF32 on CUDA).

What each of these gave at `gpt_small` is measured by scripts/bench.py (experiments/benchmarks/).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from poslab.data.datamodule import IGNORED
from poslab.model import GPT


class DivergedError(RuntimeError):
    """The training loss stopped being a finite number."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged: the loss is {loss} at step {step}")
        self.step = step
        self.loss = loss


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine decay to min_lr_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def window_mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss. Targets marked IGNORED (passkey windows score their answer digits
    only) make every window weigh the same: the mean over its scored targets, then the mean over
    windows, so 5 answer digits count as much as a whole language-model window. Without ignored
    targets this is the plain mean over all tokens."""
    if not (targets == IGNORED).any():
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    nats = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T), 0 where ignored
    scored = (targets != IGNORED).sum(1).clamp(min=1)
    return (nats.sum(1) / scored).mean()


def passkey_answer_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | None:
    """Mean loss on the answer digits of the batch's passkey windows (those with ignored targets);
    None when the batch has none."""
    passkey_windows = (targets == IGNORED).any(1)
    if not passkey_windows.any():
        return None
    return F.cross_entropy(logits[passkey_windows].transpose(1, 2), targets[passkey_windows])


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


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


class LitGPT(pl.LightningModule):
    """Built from plain config dicts (kept as hyperparameters), so a checkpoint rebuilds itself,
    and the encoding can be swapped at load time: position buffers are not saved."""

    def __init__(self, net: dict, pos_enc: dict, optimizer: dict, scheduler: dict, compile: Any = None):
        super().__init__()
        net, pos_enc, optimizer, scheduler = (_plain(c) for c in (net, pos_enc, optimizer, scheduler))
        self.save_hyperparameters({"net": net, "pos_enc": pos_enc, "optimizer": optimizer, "scheduler": scheduler})
        self.model: GPT = instantiate(net, pos_enc=instantiate(pos_enc))
        # The whole resolved run config, stored in checkpoints so poslab-eval can rebuild the data
        # and training context; set by the entry point.
        self.run_config: dict | None = None
        # model.compile; None: the run config's (poslab-train sets run_config), else auto
        if compile is not None:
            compile_enabled(compile, "cpu")  # a bad value fails here, before training
        self.compile_choice = compile
        # The compiled training forward (a function, not a submodule: checkpoints keep the plain
        # parameter names, and evaluation runs the model eagerly at any length). Set in setup().
        self._train_forward = None

    def compile_setting(self) -> Any:
        if self.compile_choice is not None:
            return self.compile_choice
        return ((self.run_config or {}).get("model") or {}).get("compile", "auto")

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device
        if device.type == "cuda":
            # TF32 for float32 matmuls (under bf16-mixed the remaining float32 ones, and evaluation)
            torch.set_float32_matmul_precision("high")
        if stage == "fit" and self._train_forward is None and compile_enabled(self.compile_setting(), device):
            self._train_forward = torch.compile(self.model.forward, **COMPILE_OPTIONS)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.run_config is not None:
            checkpoint["poslab_config"] = self.run_config
        # The logged metrics reach the disk before the checkpoint does, so a run killed after a
        # checkpoint keeps its metrics up to it (the CSV logger otherwise flushes every 100 steps).
        if self._trainer is not None:
            for logger in self._trainer.loggers:
                logger.save()

    def forward(self, idx, pos=None):
        return self.model(idx, pos)

    def _logits(self, batch, forward=None) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, *pos = batch  # (x, y) or, with randomized positions, (x, y, pos)
        return (forward or self.model)(x, pos[0] if pos else None), y

    def training_step(self, batch, batch_idx):
        logits, targets = self._logits(batch, self._train_forward)
        loss = window_mean_loss(logits, targets)
        if not torch.isfinite(loss):
            # stop now: every later step, checkpoint and score would be NaN reported as numbers
            raise DivergedError(step=self.global_step + 1, loss=loss.item())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False)
        answer_loss = passkey_answer_loss(logits.detach(), targets)
        if answer_loss is not None:  # only with data.passkey_mix: whether retrieval is being learned
            self.log("train/passkey_loss", answer_loss, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch, batch_idx):
        logits, targets = self._logits(batch)
        self.log("val/loss", window_mean_loss(logits, targets), prog_bar=True, on_epoch=True, sync_dist=True)

    def configure_optimizers(self):
        # called once the parameters are on their device, which decides `fused: auto`
        optimizer = build_optimizer(self.model.parameters(), self.hparams.optimizer)
        sched = self.hparams.scheduler
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else int(self.trainer.estimated_stepping_batches)
        warmup = min(int(sched["warmup_steps"]), max(1, total - 1))
        lr_lambda = lambda step: warmup_cosine(step, warmup, total, float(sched["min_lr_ratio"]))  # noqa: E731
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
