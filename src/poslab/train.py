"""poslab-train: train one GPT, then run the extrapolation sweep on it.

poslab-train pos_enc=alibi data.context=256
poslab-train -m pos_enc='glob(*)' seed=0,1,2
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from poslab import cli
from poslab.cli import exit_on_bad_input
from poslab.config import CONFIG_DIR, ConfigError, check_train_config
from poslab.lit import LitGPT
from poslab.tracking import finish_wandb, make_loggers, score_and_record

log = logging.getLogger("poslab.train")


def build(cfg: DictConfig):
    """Everything that can fail on a bad setting, before a logger starts or training runs."""
    lengths = check_train_config(cfg)
    try:
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        heldout = datamodule.heldout_tokens(cfg.eval.num_tokens, max(lengths))
        lit = LitGPT(cfg.model.net, cfg.pos_enc, cfg.model.optimizer, cfg.model.scheduler)
        try:
            lit.model.pos_enc.check_length(cfg.data.context)
        except ValueError as error:  # training must fit the encoding; evaluation lengths may not
            raise ValueError(f"data.context={cfg.data.context} cannot be trained with pos_enc: {error}") from error
    except InstantiationException as error:
        cause = error.__cause__ or error
        raise ConfigError(str(cause).splitlines()[0] if str(cause) else repr(cause)) from error
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return datamodule, lit, lengths, heldout


def train(cfg: DictConfig) -> dict | None:
    """Train, evaluate, write results.json; returns the results (None on non-zero DDP ranks)."""
    pl.seed_everything(cfg.seed, workers=True)
    datamodule, lit, lengths, heldout = build(cfg)
    output_dir = Path(cfg.paths.output_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    lit.run_config = resolved
    log.info(
        "%s: %d parameters, training context %d, eval lengths %s",
        cfg.pos_enc_name,
        lit.model.num_parameters(),
        cfg.data.context,
        lengths,
    )

    loggers = make_loggers(cfg.get("logger"))
    try:
        for logger in loggers:
            logger.log_hyperparams({"config": resolved, "data": _summary(datamodule.fingerprint)})
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
        trainer: pl.Trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks)
        started = time.perf_counter()
        trainer.fit(lit, datamodule=datamodule)
        wall_time = time.perf_counter() - started
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath and not trainer.fast_dev_run:
            # ModelCheckpoint saves every n steps only; last.ckpt must hold the final weights
            # (called on every rank: Lightning writes from rank 0)
            trainer.save_checkpoint(Path(checkpoint.dirpath) / "last.ckpt")
        if not trainer.is_global_zero:
            return None

        steps = trainer.global_step
        tokens = steps * cfg.data.batch_size * cfg.data.context * trainer.world_size
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        return score_and_record(
            lit.model,
            heldout,
            lengths,
            train_length=cfg.data.context,
            eval_cfg=cfg.eval,
            device=lit.device,
            loggers=loggers,
            run={
                "name": f"{cfg.pos_enc_name}-s{cfg.seed}",
                "pos_enc": cfg.pos_enc_name,
                "seed": cfg.seed,
                "group": cfg.run_group,
                "output_dir": str(output_dir),
                "task": "train",
            },
            config=resolved,
            data=datamodule.fingerprint,
            train={
                "steps": steps,
                "tokens": tokens,
                "wall_time_s": round(wall_time, 2),
                "tokens_per_s": round(tokens / wall_time, 1) if wall_time > 0 else None,
                "parameters": lit.model.num_parameters(),
                "train_loss": metrics.get("train/loss"),
                "val_loss": metrics.get("val/loss"),
                "train_context": cfg.data.context,
            },
            output_dir=output_dir,
        )
    finally:
        finish_wandb()


def _summary(fingerprint: dict) -> dict:
    """The fingerprint without its file list (kept in results.json), for logger configs."""
    return {k: v for k, v in fingerprint.items() if k != "files"}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@exit_on_bad_input
def hydra_main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    cli.train_main()
