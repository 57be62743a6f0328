"""What poslab-train and poslab-eval do once a model is ready: the extrapolation sweep and the
passkey grid on the held-out tokens, with progress on the console; then the numbers to wandb,
results.json in the run folder, and the tables on the console."""

from __future__ import annotations

import logging

import numpy as np
import torch
from hydra.utils import instantiate

from poslab.config.validate import check_encoding_target, check_passkey_filler, check_same_family
from poslab.data.tasks import Task
from poslab.errors import ConfigError
from poslab.evaluation.passkey import passkey_retrieval
from poslab.evaluation.protocols import ExtrapolationRow, extrapolation_sweep
from poslab.evaluation.settings import EvalSettings
from poslab.evaluation.tasks import score_task
from poslab.records.checkpoints import CONFIG_KEY
from poslab.records.console import write_and_show
from poslab.records.loggers import log_extrapolation, log_task
from poslab.records.results import build_results
from poslab.training import LitGPT

log = logging.getLogger("poslab")


def model_under(
    checkpoint: dict,
    encoding,
    dirs: list[str],
    name: str | None = None,
    key: str = "pos_enc",
    asked_for: str | None = None,
):
    """The checkpoint's LightningModule under `encoding` (a pos_enc config of its family; None: its
    own), and its run config. A refusal names the variant (`name`) it was asked for. An encoding
    asked for by the name the checkpoint was trained under (`asked_for`, or `name`) is its own,
    with the settings it was trained with (pos_enc=irope on an irope run keeps its nope_every),
    not the shipped YAML's."""
    if (asked_for or name) == (checkpoint.get(CONFIG_KEY) or {}).get("pos_enc_name"):
        encoding = None
    try:
        if encoding is not None:
            check_encoding_target(encoding)
            check_same_family(checkpoint, encoding["_target_"], config_dirs=dirs)
        return LitGPT.from_checkpoint(checkpoint, encoding)
    except ConfigError as error:
        if not name:
            raise
        # the setting asked for names itself once: "pos_enc=rerope: the checkpoint was trained with ..."
        raise ConfigError(f"{key}={name}: {str(error).removeprefix('pos_enc: ')}") from error


def load_heldout(data_cfg, num_tokens: int, longest: int, passkey=None):
    """The datamodule of a run's data config, set up for testing, and its held-out tokens: the
    first `num_tokens` of the test split in whole windows of `longest` (a split too short for
    them is a setting error, and so is one too short for the passkey filler of `passkey`)."""
    try:
        datamodule = instantiate(data_cfg)
        datamodule.setup("test")
        heldout = datamodule.heldout_tokens(num_tokens, longest)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    if passkey is not None:  # the test split may hold fewer tokens than eval.num_tokens asks
        check_passkey_filler(passkey.lengths, len(heldout) - 1)
    return datamodule, heldout


def score(
    model,
    heldout: np.ndarray,
    settings: EvalSettings,
    *,
    train_length: int,
    device: torch.device,
    variant: str,
    scored_bytes: int | None = None,
) -> list[ExtrapolationRow]:
    """The extrapolation sweep of one model (one variant), under each protocol."""
    log.info(
        "%s: extrapolation sweep on %d held-out tokens at lengths %s, protocols %s",
        variant,
        len(heldout) - 1,
        list(settings.lengths),
        ", ".join(settings.protocols),
    )
    rows = extrapolation_sweep(
        model,
        heldout,
        list(settings.lengths),
        train_length=train_length,
        protocols=list(settings.protocols),
        stride=settings.stride,
        batch_tokens=settings.batch_tokens,
        device=device,
        scored_bytes=scored_bytes,
        starting=lambda protocol, length, stride, windows: log.info(
            "  %s length %d%s: %d forward passes of %d tokens (%s tokens)...",
            protocol,
            length,
            f", stride {stride}" if protocol == "sliding" else "",
            windows,
            length,
            f"{windows * length:,}",
        ),
        progress=lambda row: log.info(
            "  %s length %d: %s",
            row.protocol,
            row.eval_length,
            f"ppl {row.ppl:.3f}" if row.status == "ok" else row.status,
        ),
    )
    for row in rows:
        row.variant = variant
    return rows


def score_passkey(
    model,
    heldout: np.ndarray,
    settings: EvalSettings,
    *,
    train_length: int,
    device: torch.device,
    variant: str,
    trained_with_mix: float,
) -> dict | None:
    """The passkey grid of one model, filler from the held-out tokens; None when eval.passkey is off."""
    passkey = settings.passkey
    if passkey is None:
        return None
    log.info("%s: passkey retrieval at lengths %s, depths %s", variant, list(passkey.lengths), list(passkey.depths))
    result = passkey_retrieval(
        model,
        heldout,
        list(passkey.lengths),
        list(passkey.depths),
        trials=passkey.trials,
        seed=passkey.seed,
        train_length=train_length,
        threshold=passkey.threshold,
        batch_tokens=settings.batch_tokens,
        device=device,
        progress=lambda length, accuracy, status: log.info(
            "  passkey length %d: %s",
            length,
            ", ".join(f"{a:.0%}" if a is not None else s for a, s in zip(accuracy, status, strict=True)),
        ),
    )
    result.trained_with_mix = trained_with_mix
    result.variant = variant
    return result.to_dict()


def score_and_record(
    model,
    heldout: np.ndarray,
    settings: EvalSettings,
    *,
    train_length: int,
    device: torch.device,
    loggers: list,
    run: dict,
    config: dict,
    data: dict,
    train: dict,
    output_dir,
    scored_bytes: int | None = None,
) -> dict:
    """The end of a training job: the extrapolation sweep and the passkey grid, both to wandb,
    results.json in the run folder, and the tables on the console. Returns the results."""
    rows = score(
        model,
        heldout,
        settings,
        train_length=train_length,
        device=device,
        variant=run["pos_enc"],
        scored_bytes=scored_bytes,
    )
    passkey = score_passkey(
        model,
        heldout,
        settings,
        train_length=train_length,
        device=device,
        variant=run["pos_enc"],
        trained_with_mix=config["data"].get("passkey_mix", 0.0),
    )
    log_extrapolation(loggers, rows, passkey)
    results = build_results(
        run=run, config=config, data=data, train=train, extrapolation=[row.to_dict() for row in rows], passkey=passkey
    )
    return write_and_show(results, output_dir)


def score_task_and_record(
    model,
    task: Task,
    *,
    device: torch.device,
    batch_size: int,
    loggers: list,
    run: dict,
    config: dict,
    data: dict,
    train: dict,
    output_dir,
) -> dict:
    """The end of a task run: exact match and token accuracy at every test length, to wandb,
    results.json in the run folder, and the table on the console."""
    block = score_task_block(model, task, device=device, batch_size=batch_size, variant=run["pos_enc"])
    log_task(loggers, block)
    results = build_results(run=run, config=config, data=data, train=train, extrapolation=[], task=block)
    return write_and_show(results, output_dir)


def score_task_block(model, task: Task, *, device: torch.device, batch_size: int, variant: str) -> dict:
    """results.json's task block for one model (one variant): the task's settings and a row per
    test length, each carrying the variant."""
    log.info(
        "%s: %s at input lengths %s, %d examples each",
        variant,
        task.name,
        task.test_lengths,
        task.examples_per_length,
    )
    rows = score_task(
        model,
        task,
        device=device,
        batch_size=batch_size,
        progress=lambda row: log.info(
            "  %s length %d (%d tokens): %s",
            task.name,
            row.length,
            row.sequence_length,
            f"exact match {row.exact_match:.3f}, token accuracy {row.token_accuracy:.3f}"
            if row.status == "ok"
            else row.status,
        ),
    )
    return {**task.settings(), "rows": [{**row.to_dict(), "variant": variant} for row in rows]}
