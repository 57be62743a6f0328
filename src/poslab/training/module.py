"""The LightningModule around the GPT: next-token loss, AdamW with warmup + cosine, logging, the
run config in every checkpoint, and rebuilding a model from a checkpoint (under another encoding of
its family, if asked)."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from poslab.errors import ConfigError
from poslab.model import GPT
from poslab.records.checkpoints import CONFIG_KEY
from poslab.training.losses import passkey_answer_loss, window_mean_loss
from poslab.training.optim import COMPILE_OPTIONS, build_optimizer, compile_enabled, warmup_cosine


class DivergedError(RuntimeError):
    """The training loss stopped being a finite number."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"training diverged: the loss is {loss} at step {step}")
        self.step = step
        self.loss = loss


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

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, pos_enc: DictConfig | dict | None = None) -> tuple[LitGPT, DictConfig]:
        """The model of a checkpoint (records.checkpoints.read_checkpoint), optionally under
        another encoding config `pos_enc` (of the checkpoint's family: poslab.config checks
        that), and the checkpoint's run config with that encoding in place. The new encoding's
        interpolations (model width, training context) resolve against the checkpoint's config."""
        run_cfg = OmegaConf.create(checkpoint[CONFIG_KEY])
        hparams = checkpoint["hyper_parameters"]
        encoding = hparams["pos_enc"]
        if pos_enc is not None:
            with open_dict(run_cfg):
                run_cfg.pos_enc = (
                    OmegaConf.to_container(pos_enc, resolve=False) if isinstance(pos_enc, DictConfig) else pos_enc
                )
            encoding = OmegaConf.to_container(run_cfg.pos_enc, resolve=True)
        try:
            lit = cls(hparams["net"], encoding, hparams["optimizer"], hparams["scheduler"])
        except InstantiationException as error:  # the encoding's own ValueError, wrapped by Hydra
            cause = error.__cause__ or error
            raise ConfigError(f"pos_enc: {str(cause).splitlines()[0]}") from error
        try:
            lit.load_state_dict(checkpoint["state_dict"])
        except RuntimeError as error:
            # the first line only says that loading failed; the next name which weights differ
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            detail = "; ".join(lines[1:3]) or lines[0]
            raise ConfigError(f"pos_enc: the checkpoint's weights do not fit this encoding: {detail}") from error
        return lit, run_cfg

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
            checkpoint[CONFIG_KEY] = self.run_config
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
