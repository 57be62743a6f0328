"""poslab-eval: score a trained checkpoint at lengths past its training context.

    poslab-eval ckpt_path=outputs/runs/.../checkpoints/last.ckpt
    poslab-eval ckpt_path=... pos_enc=rope_pi eval.lengths_x='[1,2,4,8,16,32]'

The model, data and training context come from the checkpoint. `pos_enc=` swaps in another
setting of the same encoding family (position buffers are never saved): RoPE weights can be
scored under Position Interpolation without retraining.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from poslab.commands.job import config_dirs, guarded_job
from poslab.commands.scoring import load_heldout, model_under, score, score_passkey, score_task_block
from poslab.config import CONFIG_DIR, load_choice
from poslab.config.evaluation import check_eval_temperature, check_eval_window, evaluation_settings
from poslab.config.resolvers import register_resolvers
from poslab.config.task_config import make_task
from poslab.config.validate import (
    check_eval_config,
    check_tokenizer_config,
    eval_variants,
)
from poslab.errors import ConfigError
from poslab.model.window import window_refusal
from poslab.records.checkpoints import checkpoint_run_name, read_checkpoint, run_folder
from poslab.records.console import write_and_show
from poslab.records.loggers import finish_wandb, grouping_keys, log_extrapolation, log_task, make_loggers
from poslab.records.results import FILENAME, build_results, read_results
from poslab.training import LitGPT

log = logging.getLogger("poslab.eval")

register_resolvers()


def requested_variants(cfg: DictConfig) -> list[tuple[str, DictConfig | None]]:
    """(name, encoding config) for each way the checkpoint is to be scored: `eval.variants`, or
    the one `pos_enc=` (None: the checkpoint's own encoding)."""
    names = eval_variants(cfg, config_dirs())
    if names is None:
        return [(cfg.pos_enc_name, cfg.get("pos_enc"))]
    return [(name, load_choice("pos_enc", name, config_dirs())) for name in names]


def evaluate(cfg: DictConfig) -> dict:
    """Score one checkpoint under each requested variant, all on the same held-out tokens (or, for
    a task checkpoint, the same test examples); one results.json whose rows carry their variant,
    one wandb run per variant."""
    variants = requested_variants(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    # load every variant before scoring any: one that does not fit is refused up front
    models = {}
    key = "eval.variants" if cfg.eval.get("variants") else "pos_enc"
    for name, encoding in variants:
        asked = name if encoding is not None else None  # a refusal names the setting asked for
        models[name], run_cfg = model_under(checkpoint, encoding, config_dirs(), asked, key=key, asked_for=name)
    context = run_cfg.data.context
    net = run_cfg.model.net
    temperature = check_eval_temperature(cfg.eval, net.get("logit_temperature", "none"))
    window = check_eval_window(cfg.eval, net.get("train_context") or context)
    for name, lit in models.items():
        if window is not None:
            refusal = window_refusal(lit.model)
            if refusal:
                raise ConfigError(f"eval.window cannot score {key}={name}: {refusal}")
            lit.model.window = window
    if temperature is not None:
        for lit in models.values():
            with_temperature(
                lit.model, temperature, cfg.eval.get("temperature_scale"), net.get("train_context") or context
            )
    # a task checkpoint is scored on its task's test examples (the training run's), a language
    # model on held-out text
    task = make_task(run_cfg.task) if run_cfg.get("task") is not None else None
    if task is not None:
        if (cfg.eval.get("passkey") or {}).get("enabled"):
            raise ConfigError(
                "eval.passkey scores language models; a task checkpoint is scored on its task's test lengths"
            )
    else:
        settings = check_eval_config(cfg.eval, context)
        check_tokenizer_config(run_cfg.data, cfg.eval)
    trained_name = run_cfg.pos_enc_name
    with open_dict(cfg):
        cfg.pos_enc_name = variants[0][0] if len(variants) == 1 else trained_name
        cfg.seed = run_cfg.seed  # an eval run is named and grouped by its checkpoint's seed
    pl.seed_everything(cfg.seed)
    if task is None:
        datamodule, heldout = load_heldout(run_cfg.data, settings.num_tokens, max(settings.lengths), settings.passkey)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # the checkpoint's config with this evaluation's settings: what was scored
    scored_config = {
        **OmegaConf.to_container(run_cfg, resolve=True),
        "eval": OmegaConf.to_container(cfg.eval),
        "pos_enc_name": cfg.pos_enc_name,
        "ckpt_path": str(cfg.ckpt_path),
    }
    if temperature is not None:  # what was scored: the temperature put on at evaluation
        scored_config["model"]["net"].update(
            logit_temperature=temperature, temperature_scale=cfg.eval.get("temperature_scale")
        )
    if len(variants) > 1:  # each variant's encoding is in its rows; the config holds the trained one
        scored_config["pos_enc"] = checkpoint["hyper_parameters"]["pos_enc"]
    rows, passkey = [], None
    for name, lit in models.items():
        lit.to(device)
        loggers = make_loggers(_logger_config_for(cfg, name, several=len(models) > 1))
        try:
            for logger in loggers:
                keys = grouping_keys(
                    lit.model,
                    name=name,
                    trained_as=trained_name,
                    job="eval",
                    seed=cfg.seed,
                    run_group=cfg.get("run_group"),
                    train_context=context,
                    max_steps=run_cfg.trainer.get("max_steps"),
                    task=task.name if task is not None else None,
                )
                logger.log_hyperparams({**keys, "config": scored_config})
            if task is not None:
                block = score_task_block(
                    lit.model, task, device=device, batch_size=run_cfg.data.eval_batch_size, variant=name
                )
                log_task(loggers, block)
                rows += block["rows"]
                continue
            scored = score(
                lit.model,
                heldout,
                settings,
                train_length=context,
                device=device,
                variant=name,
                scored_bytes=datamodule.heldout_bytes(heldout),
            )
            # at most one variant when passkey is on (poslab.config refuses several)
            passkey = score_passkey(
                lit.model,
                heldout,
                settings,
                train_length=context,
                device=device,
                variant=name,
                trained_with_mix=run_cfg.data.get("passkey_mix", 0.0),
            )
            log_extrapolation(loggers, scored, passkey)
            rows += [row.to_dict() for row in scored]
        finally:
            finish_wandb()
            lit.cpu()
    results = build_results(
        run={
            "name": f"{cfg.pos_enc_name}-s{run_cfg.seed}",
            "pos_enc": cfg.pos_enc_name,
            "seed": run_cfg.seed,
            "group": cfg.run_group,
            "output_dir": str(Path(cfg.paths.output_dir)),
            "job": "eval",
            "ckpt_path": str(cfg.ckpt_path),
            "checkpoint_run": checkpoint_run_name(cfg.ckpt_path),
            "trained_as": trained_name,
            "variant": cfg.pos_enc_name if len(variants) == 1 else None,
            "variants": list(models),
        },
        config=scored_config,
        data=datamodule.fingerprint if task is None else {"task": task.settings(), "context": context},
        train=checkpoint_train_figures(cfg.ckpt_path, context, next(iter(models.values()))),
        extrapolation=rows if task is None else [],
        passkey=passkey,
        task={**task.settings(), "rows": rows} if task is not None else None,
    )
    return write_and_show(results, Path(cfg.paths.output_dir))


def with_temperature(model, rule: str, scale: float | None, train_context: int) -> None:
    """Score `model` under the temperature rule `rule` (eval.logit_temperature), relative to the
    context it was trained at; the rules it may take have no weights (poslab.config checks)."""
    model.logit_temperature = rule
    model.temperature_scale = scale
    model.train_context = int(train_context)


def _logger_config_for(cfg: DictConfig, variant: str, several: bool) -> DictConfig | None:
    """The logger config for one variant: its wandb run named after it (one run per variant, so a
    dashboard overlays them like training runs) and, with several variants, its own CSV folder
    (csv/<variant>/: Lightning's CSV logger would otherwise delete the previous variant's file)."""
    logger_cfg = cfg.get("logger")
    if not logger_cfg:
        return logger_cfg
    logger_cfg = logger_cfg.copy()
    with open_dict(logger_cfg):
        for one in logger_cfg.values():
            if one is None or "_target_" not in one:
                continue
            if one._target_.endswith("WandbLogger"):
                one.name = "+".join([variant, *evaluation_settings(cfg.eval)]) + f"-s{cfg.seed}"
            elif one._target_.endswith("CSVLogger") and several:
                one.version = variant
    return logger_cfg


def checkpoint_train_figures(ckpt_path: str, context: int, lit: LitGPT) -> dict:
    """What the checkpoint's own results.json says of its training, if it sits in its run folder."""
    run_results = run_folder(ckpt_path) / FILENAME
    train = read_results(run_results)["train"] if run_results.is_file() else {}
    return {**train, "train_context": context, "parameters": lit.model.num_parameters()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@guarded_job(job="eval")
def hydra_main(cfg: DictConfig) -> dict:
    return evaluate(cfg)
