"""poslab-inspect: why an encoding extrapolates or breaks, in plots, numbers and a short summary.

    poslab-inspect pos_enc=rope                                  what RoPE does to positions
    poslab-inspect ckpt_path=RUN/checkpoints/last.ckpt 'lengths_x=[1,2,4,8]'
    poslab-inspect ckpt_path=... 'variant=[rope,rope_pi,rope_yarn]'

Without a checkpoint: the encoding's geometry at the training context `data.context` (rotary
wavelengths and critical dimension, how the scaling members move frequencies and positions,
similarity of position m to n, how far back each bias head sees). With one: the same for the
checkpoint's encoding (learned tables and biases as trained), and attention recomputed inside the
model at each length. Everything lands in outputs/inspect/<date>_<name>_<suffix>/: PNGs,
summary.txt and inspect.json (strict JSON); with a wandb logger, the same figures and numbers.
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from poslab import cli
from poslab.config import CONFIG_DIR, ConfigError, _trained_encoding, available, check_model_config, checkpoint_run_name
from poslab.diagnostics.attention import STATISTICS, attention_profile
from poslab.diagnostics.describe import (
    Description,
    Settings,
    describe_attention,
    describe_encoding,
    describe_rotary_members,
)
from poslab.diagnostics.plots import attention_by_variant_figure
from poslab.encodings import PositionalEncoding, RoPE
from poslab.eval_checkpoint import encodings_of_family, load_checkpoint, read_checkpoint
from poslab.results import environment, git_state, write_json_atomically

log = logging.getLogger("poslab.inspect")

SCHEMA = "poslab.inspect/1"
FILENAME = "inspect.json"
SUMMARY_FILENAME = "summary.txt"


def _variant_names(variant) -> list[str]:
    if variant is None:
        return []
    return [str(v) for v in variant] if isinstance(variant, (list, tuple, ListConfig)) else [str(variant)]


def _inspect_name(choice: str | None, ckpt_path: str | None, variant) -> str:
    """The output folder's name: the encoding, or the checkpoint's run and the variant(s)."""
    if not ckpt_path:
        return choice or "none"
    names = _variant_names(variant) or [_trained_encoding(None, ckpt_path)]
    return f"{checkpoint_run_name(ckpt_path)}_{'+'.join(names)}"


if not OmegaConf.has_resolver("poslab.inspect_name"):
    OmegaConf.register_new_resolver("poslab.inspect_name", _inspect_name)


def _positive_int(cfg: DictConfig, key: str) -> int:
    value = cfg.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    return value


def _multiples(cfg: DictConfig, key: str) -> list[float]:
    values = cfg.get(key)
    if not isinstance(values, ListConfig) or not values:
        raise ConfigError(
            f"{key} must be a non-empty list of multiples of the context, e.g. {key}=[2,4], got {values!r}"
        )
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1:
            raise ConfigError(f"{key}: every multiple must be a number >= 1, got {value!r}")
    return sorted({float(v) for v in values})


def check_inspect_config(cfg: DictConfig) -> Settings:
    """Every inspect setting, checked once, before a model or a file is touched."""
    has_checkpoint = bool(cfg.get("ckpt_path"))
    if not has_checkpoint and cfg.get("pos_enc") is None:
        raise ConfigError(
            f"give pos_enc=NAME to inspect an encoding (one of: {', '.join(available('pos_enc'))}), "
            "or ckpt_path=RUN/checkpoints/last.ckpt to inspect a trained model"
        )
    if has_checkpoint and cfg.get("pos_enc") is not None:
        raise ConfigError(
            "with ckpt_path, name the encoding with variant=NAME (a member of the checkpoint's family); "
            "pos_enc= inspects an encoding without a checkpoint"
        )
    names = _variant_names(cfg.get("variant"))
    if names and not has_checkpoint:
        raise ConfigError("variant= applies to a checkpoint (ckpt_path=...); without one, use pos_enc=NAME")
    unknown = [name for name in names if name not in available("pos_enc")]
    if unknown:
        raise ConfigError(f"variant: {', '.join(unknown)} unknown; available: {', '.join(available('pos_enc'))}")
    if len(set(names)) != len(names):
        raise ConfigError(f"variant lists a name twice: {names}")
    if not has_checkpoint:
        check_model_config(cfg)
        _positive_int(cfg.data, "context")
    tolerance = cfg.get("return_tolerance")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ConfigError(f"return_tolerance must be a fraction between 0 and 1, e.g. 0.05, got {tolerance!r}")
    threshold = cfg.get("bias_threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold < 0:
        raise ConfigError(f"bias_threshold must be a negative number of logits, e.g. -4.6, got {threshold!r}")
    _multiples(cfg, "lengths_x")
    for key in ("distance_x", "num_tokens"):
        _positive_int(cfg, key)
    return Settings(
        distance_x=cfg.distance_x,
        scales_x=_multiples(cfg, "scales_x"),
        positions_x=_multiples(cfg, "positions_x"),
        return_tolerance=float(tolerance),
        bias_threshold=float(threshold),
    )


def eval_lengths(cfg: DictConfig, train_context: int) -> list[int]:
    lengths = []
    for multiple in _multiples(cfg, "lengths_x"):
        if not (multiple * train_context).is_integer():
            raise ConfigError(f"lengths_x: {multiple:g} x {train_context} is not a whole number of tokens")
        lengths.append(int(multiple * train_context))
    return lengths


def rotary_members(config: DictConfig) -> dict[str, RoPE]:
    """Every conf/pos_enc member of the rotary family, built with `config`'s sizes and context."""
    members = {}
    for name in encodings_of_family("rotary"):
        members[name] = build_encoding(config, OmegaConf.load(Path(CONFIG_DIR) / "pos_enc" / f"{name}.yaml"))
    return members


def build_encoding(config: DictConfig, pos_enc: DictConfig) -> PositionalEncoding:
    """An encoding whose interpolations (model width, training context) resolve against `config`."""
    config = config.copy()
    with open_dict(config):
        config.pos_enc = pos_enc
    try:
        return instantiate(config.pos_enc)
    except Exception as error:  # instantiate wraps the encoding's own ValueError
        cause = error.__cause__ or error
        raise ConfigError(f"pos_enc: {str(cause).splitlines()[0]}") from error


def load_variants(cfg: DictConfig) -> tuple[dict, DictConfig]:
    """{variant name: model} for the checkpoint under each requested variant, and its run config."""
    names = _variant_names(cfg.get("variant"))
    requested = [(name, OmegaConf.load(Path(CONFIG_DIR) / "pos_enc" / f"{name}.yaml")) for name in names]
    models, run_cfg = {}, None
    checkpoint = read_checkpoint(cfg.ckpt_path)
    for name, encoding in requested or [(None, None)]:
        try:
            lit, run_cfg = load_checkpoint(cfg.ckpt_path, encoding, checkpoint)
        except ConfigError as error:
            raise ConfigError(f"variant={name}: {error}" if name else str(error)) from error
        models[name or run_cfg.get("pos_enc_name", "trained")] = lit.model
    return models, run_cfg


def heldout(run_cfg: DictConfig, num_tokens: int, longest: int) -> np.ndarray:
    try:
        datamodule = instantiate(run_cfg.data)
        datamodule.setup("test")
        return datamodule.heldout_tokens(max(num_tokens, longest), longest)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _log_row(row: dict) -> None:
    figures = f"loss {row['loss']:.3f} nats/token" if row["status"] == "ok" else row["status"]
    log.info("  length %d: %s", row["eval_length"], figures)


def inspect(cfg: DictConfig) -> dict:
    """Describe the encoding (or checkpoint) of `cfg`: figures, summary.txt and inspect.json."""
    settings = check_inspect_config(cfg)
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    attention = {}
    if cfg.get("ckpt_path"):
        models, run_cfg = load_variants(cfg)
        train_context = int(run_cfg.data.context)
        lengths = eval_lengths(cfg, train_context)
        with open_dict(cfg):
            cfg.seed = run_cfg.seed
        torch.manual_seed(cfg.seed)
        tokens = heldout(run_cfg, cfg.num_tokens, max(lengths))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for name, model in models.items():
            log.info("%s: attention at lengths %s on %d held-out tokens", name, lengths, len(tokens) - 1)
            model.to(device)
            attention[name] = attention_profile(model, tokens, lengths, train_context, device, progress=_log_row)
            model.cpu()
        encodings = {name: model.pos_enc for name, model in models.items()}
        geometry_cfg, trained = run_cfg, True
    else:
        train_context = int(cfg.data.context)
        torch.manual_seed(cfg.seed)
        encodings = {cfg.pos_enc_name: build_encoding(cfg, cfg.pos_enc)}
        geometry_cfg, trained = cfg, False

    descriptions: dict[str, Description] = {}
    for name, encoding in encodings.items():
        descriptions[name] = describe_encoding(name, encoding, train_context, settings, folder, trained)
    families = {getattr(encoding, "family", None) for encoding in encodings.values()}
    members = Description()
    if "rotary" in families:
        members = describe_rotary_members(rotary_members(geometry_cfg), train_context, settings, folder)
    attention_descriptions = {
        name: describe_attention(name, rows, train_context, folder) for name, rows in attention.items()
    }
    comparison = []
    if sum(any(row["status"] == "ok" for row in rows) for rows in attention.values()) > 1:
        comparison.append(attention_by_variant_figure(attention, train_context, folder / "attention_by_variant.png"))

    summary = [line for d in descriptions.values() for line in d.summary] + members.summary
    summary += [line for d in attention_descriptions.values() for line in d.summary]
    figures = [
        *(f for d in descriptions.values() for f in d.figures),
        *members.figures,
        *(f for d in attention_descriptions.values() for f in d.figures),
        *comparison,
    ]
    (folder / SUMMARY_FILENAME).write_text("\n".join(summary) + "\n")
    log.info("summary:\n%s", "\n".join(f"  {line}" for line in summary))
    results = {
        "schema": SCHEMA,
        "status": "ok",
        "run": {
            "name": cfg.pos_enc_name,
            "task": "inspect",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "output_dir": str(folder),
            "ckpt_path": str(cfg.ckpt_path) if cfg.get("ckpt_path") else None,
            "trained_as": geometry_cfg.get("pos_enc_name") if trained else None,
            "variants": list(encodings),
            "seed": cfg.seed,
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
        # with a checkpoint: the config it was trained with (model, data, training context)
        "trained_config": read_checkpoint(cfg.ckpt_path)["poslab_config"] if trained else None,
        "git": git_state(),
        "environment": environment(),
        "train_context": train_context,
        "encodings": {
            name: {"family": encoding_family_of(encodings[name]), **d.numbers} for name, d in descriptions.items()
        },
        "rotary_members": members.numbers or None,
        "attention": {name: rows for name, rows in attention.items()} or None,
        "figures": [f.name for f in figures],
        "summary": summary,
    }
    write_json_atomically(results, folder / FILENAME)
    log.info("wrote %s and %d figures in %s", FILENAME, len(figures), folder)
    log_to_wandb(cfg, results, figures)
    return results


def encoding_family_of(encoding: PositionalEncoding) -> str:
    return getattr(encoding, "family", None) or type(encoding).__name__


def _wandb_logger_config(cfg: DictConfig, name: str) -> DictConfig | None:
    """The wandb entry of the logger config, with the run named after what it describes; None
    with logger=csv (inspect.json is the local record)."""
    logger_cfg = cfg.get("logger")
    if not logger_cfg or logger_cfg.get("wandb") is None:
        return None
    logger_cfg = OmegaConf.create({"wandb": OmegaConf.to_container(logger_cfg.wandb, resolve=True)})
    logger_cfg.wandb.name = f"inspect-{name}-s{cfg.seed}"
    return logger_cfg


def log_to_wandb(cfg: DictConfig, results: dict, figures: list[Path]) -> None:
    """One wandb run per variant (one in all without a checkpoint), so runs overlay by length:
    its figures, its geometry numbers in the summary, attention per layer and head by length."""
    from pytorch_lightning.loggers import WandbLogger

    from poslab.tracking import finish_wandb, make_loggers

    for name in results["run"]["variants"]:
        logger_cfg = _wandb_logger_config(cfg, name)
        if logger_cfg is None:
            return
        try:
            for logger in make_loggers(logger_cfg):
                if not isinstance(logger, WandbLogger):
                    continue
                import wandb

                run = logger.experiment
                run.config.update({"config": results["config"], "variant": name}, allow_val_change=True)
                shared = {"rotary_frequency_moves.png", "rotary_interpolated_positions.png", "attention_by_variant.png"}
                own = [f for f in figures if f.name.startswith(f"{name}_") or f.name in shared]
                run.log({f"inspect/figure/{f.stem}": wandb.Image(str(f)) for f in own})
                numbers = results["encodings"][name]
                for key in ("turning_pairs", "reach", "critical_dimension", "similarity"):
                    if key in numbers:
                        run.summary[f"inspect/{key}"] = numbers[key]
                _log_attention(run, (results["attention"] or {}).get(name, []))
        finally:
            finish_wandb()


def _log_attention(run, rows: list[dict]) -> None:
    run.define_metric("inspect/eval_length")
    run.define_metric("inspect/*", step_metric="inspect/eval_length")
    for row in rows:
        if row["status"] != "ok":
            continue
        metrics = {"inspect/eval_length": row["eval_length"], "inspect/loss": row["loss"]}
        for layer in row["layers"]:
            for head in layer["heads"]:
                for statistic in STATISTICS:
                    value = head[statistic]
                    if value is not None and np.isfinite(value):
                        metrics[f"inspect/{statistic}/layer{layer['layer']}/head{head['head']}"] = value
        run.log(metrics)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="inspect")
@cli.guarded_job(task="inspect")
def hydra_main(cfg: DictConfig) -> dict:
    return inspect(cfg)


if __name__ == "__main__":
    cli.inspect_main()
