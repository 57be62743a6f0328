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
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from poslab import cli
from poslab.config import (
    CONFIG_DIR,
    ConfigError,
    available,
    check_eval_config,
    check_tokenizer_config,
    checkpoint_run_name,
)
from poslab.lit import LitGPT
from poslab.results import FILENAME, build_results, read_results
from poslab.tracking import finish_wandb, log_extrapolation, make_loggers, record, score, score_passkey

log = logging.getLogger("poslab.eval")


def encoding_family(target: str) -> str:
    """The family of an encoding class (weights of one family mean the same thing)."""
    cls = get_class(target)
    return getattr(cls, "family", None) or cls.__name__


def encodings_of_family(family: str) -> list[str]:
    """The conf/pos_enc names whose encoding belongs to `family`."""
    names = []
    for name in available("pos_enc"):
        target = OmegaConf.load(Path(CONFIG_DIR) / "pos_enc" / f"{name}.yaml").get("_target_")
        try:
            if target and encoding_family(target) == family:
                names.append(name)
        except (ImportError, AttributeError, ValueError):
            continue
    return names


def read_checkpoint(ckpt_path: str) -> dict:
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors alike: it is not a checkpoint
        why = f"torch.load failed: {type(error).__name__}"
        raise ConfigError(f"ckpt_path={ckpt_path}: not a poslab checkpoint ({why})") from error
    if not isinstance(checkpoint, dict) or "poslab_config" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"ckpt_path={ckpt_path}: not a poslab checkpoint (no poslab_config inside)")
    return checkpoint


def load_checkpoint(
    ckpt_path: str, pos_enc: DictConfig | None, checkpoint: dict | None = None
) -> tuple[LitGPT, DictConfig]:
    """The model of a checkpoint, optionally under another encoding of the same family; and its
    run config with that encoding in place. `checkpoint`: the file already read (several
    variants of one checkpoint read it once)."""
    checkpoint = checkpoint if checkpoint is not None else read_checkpoint(ckpt_path)
    run_cfg = OmegaConf.create(checkpoint["poslab_config"])
    hparams = checkpoint["hyper_parameters"]
    encoding = hparams["pos_enc"]
    if pos_enc is not None:
        trained, asked = encoding_family(encoding["_target_"]), encoding_family(pos_enc["_target_"])
        if trained != asked:
            allowed = ", ".join(encodings_of_family(trained)) or "its own"
            raise ConfigError(
                f"pos_enc: the checkpoint was trained with {run_cfg.pos_enc_name} ({trained} family) and cannot "
                f"be scored under a {asked} encoding; allowed: {allowed}"
            )
        # resolve the new encoding's interpolations (model width, training context) against the
        # checkpoint's own config, then use it in place of the trained one
        with open_dict(run_cfg):
            run_cfg.pos_enc = OmegaConf.to_container(pos_enc, resolve=False)
        encoding = OmegaConf.to_container(run_cfg.pos_enc, resolve=True)
    lit = LitGPT(hparams["net"], encoding, hparams["optimizer"], hparams["scheduler"])
    try:
        lit.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"pos_enc: the checkpoint's weights do not fit this encoding ({first_line})") from error
    return lit, run_cfg


def requested_variants(cfg: DictConfig) -> list[tuple[str, DictConfig | None]]:
    """(name, encoding config) for each way the checkpoint is to be scored: `eval.variants`, or
    the one `pos_enc=` (None: the checkpoint's own encoding)."""
    names = cfg.eval.get("variants")
    if not names:
        return [(cfg.pos_enc_name, cfg.get("pos_enc"))]
    if cfg.get("pos_enc") is not None:
        raise ConfigError("give pos_enc= or eval.variants=[...], not both")
    known = available("pos_enc")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"eval.variants: {', '.join(unknown)} unknown; available: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"eval.variants lists a name twice: {list(names)}")
    return [(name, OmegaConf.load(Path(CONFIG_DIR) / "pos_enc" / f"{name}.yaml")) for name in names]


def evaluate(cfg: DictConfig) -> dict:
    """Score one checkpoint under each requested variant, all on the same held-out tokens; one
    results.json whose rows carry their variant, one wandb run per variant."""
    variants = requested_variants(cfg)
    checkpoint = read_checkpoint(cfg.ckpt_path)
    # load every variant before scoring any: one that does not fit is refused up front
    models = {}
    for name, encoding in variants:
        try:
            models[name], run_cfg = load_checkpoint(cfg.ckpt_path, encoding, checkpoint)
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}" if len(variants) > 1 else str(error)) from error
    context = run_cfg.data.context
    lengths = check_eval_config(cfg.eval, context)
    check_tokenizer_config(run_cfg.data, cfg.eval)
    trained_name = run_cfg.pos_enc_name
    with open_dict(cfg):
        cfg.pos_enc_name = variants[0][0] if len(variants) == 1 else trained_name
        cfg.seed = run_cfg.seed  # an eval run is named and grouped by its checkpoint's seed
    pl.seed_everything(cfg.seed)
    try:
        datamodule = instantiate(run_cfg.data)
        datamodule.setup("test")
        heldout = datamodule.heldout_tokens(cfg.eval.num_tokens, max(lengths))
    except ValueError as error:
        raise ConfigError(str(error)) from error

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # the checkpoint's config with this evaluation's settings: what was scored
    scored_config = {
        **OmegaConf.to_container(run_cfg, resolve=True),
        "eval": OmegaConf.to_container(cfg.eval),
        "pos_enc_name": cfg.pos_enc_name,
        "ckpt_path": str(cfg.ckpt_path),
    }
    if len(variants) > 1:  # each variant's encoding is in its rows; the config holds the trained one
        scored_config["pos_enc"] = checkpoint["hyper_parameters"]["pos_enc"]
    rows, passkey = [], None
    for name, lit in models.items():
        lit.to(device)
        loggers = make_loggers(_logger_config_for(cfg, name, several=len(models) > 1))
        try:
            for logger in loggers:
                logger.log_hyperparams({"config": scored_config, "trained_as": trained_name, "variant": name})
            scored = score(
                lit.model,
                heldout,
                lengths,
                train_length=context,
                eval_cfg=cfg.eval,
                device=device,
                variant=name,
                scored_bytes=datamodule.heldout_bytes(heldout),
            )
            # at most one variant when passkey is on (poslab.config refuses several)
            passkey = score_passkey(
                lit.model,
                heldout,
                context=context,
                train_length=context,
                eval_cfg=cfg.eval,
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
            "task": "eval",
            "ckpt_path": str(cfg.ckpt_path),
            "checkpoint_run": checkpoint_run_name(cfg.ckpt_path),
            "trained_as": trained_name,
            "variant": cfg.pos_enc_name if len(variants) == 1 else None,
            "variants": list(models),
        },
        config=scored_config,
        data=datamodule.fingerprint,
        train=checkpoint_train_figures(cfg.ckpt_path, context, next(iter(models.values()))),
        extrapolation=rows,
    )
    results["passkey"] = passkey
    return record(results, Path(cfg.paths.output_dir))


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
                one.name = f"{variant}-s{cfg.seed}"
            elif one._target_.endswith("CSVLogger") and several:
                one.version = variant
    return logger_cfg


def checkpoint_train_figures(ckpt_path: str, context: int, lit: LitGPT) -> dict:
    """What the checkpoint's own results.json says of its training, if it sits in its run folder."""
    run_results = Path(ckpt_path).resolve().parent.parent / FILENAME
    train = read_results(run_results)["train"] if run_results.is_file() else {}
    return {**train, "train_context": context, "parameters": lit.model.num_parameters()}


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
@cli.guarded_job(task="eval")
def hydra_main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


if __name__ == "__main__":
    cli.run_console_script("poslab-eval", lambda: hydra_main, cli.check_eval_command_line)
