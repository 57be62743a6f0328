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
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from poslab.commands.job import config_dirs, guarded_job
from poslab.commands.scoring import load_heldout, model_under
from poslab.config import CONFIG_DIR, load_choice, names_of
from poslab.config.registry import encodings_of_family
from poslab.config.resolvers import register_resolvers
from poslab.config.validate import (
    check_encoding_target,
    check_inspect_config,
    inspect_lengths,
)
from poslab.diagnostics.attention import attention_profile, mean_log_forget_gates
from poslab.diagnostics.describe import (
    Description,
    describe_attention,
    describe_encoding,
    describe_forget_gates,
    describe_rotary_members,
)
from poslab.diagnostics.plots import attention_by_variant_figure
from poslab.encodings import PositionalEncoding, RoPE, family_of
from poslab.errors import ConfigError
from poslab.records.checkpoints import CONFIG_KEY, read_checkpoint
from poslab.records.loggers import log_inspection
from poslab.records.results import environment, git_state, write_json_atomically

log = logging.getLogger("poslab.inspect")

register_resolvers()

SCHEMA = "poslab.inspect/1"
FILENAME = "inspect.json"
SUMMARY_FILENAME = "summary.txt"


def rotary_members(config: DictConfig) -> dict[str, RoPE]:
    """Every conf/pos_enc member of the rotary family, built with `config`'s sizes and context."""
    dirs = config_dirs()
    return {
        name: build_encoding(config, load_choice("pos_enc", name, dirs)) for name in encodings_of_family("rotary", dirs)
    }


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


def load_variants(cfg: DictConfig, checkpoint: dict) -> tuple[dict, DictConfig]:
    """{variant name: model} for the checkpoint under each requested variant, and its run config."""
    dirs = config_dirs()
    requested = [(name, load_choice("pos_enc", name, dirs)) for name in names_of(cfg.get("variant"))]
    models, run_cfg = {}, None
    for name, encoding in requested or [(None, None)]:
        lit, run_cfg = model_under(checkpoint, encoding, dirs, name, key="variant")
        models[name or run_cfg.get("pos_enc_name", "trained")] = lit.model
    return models, run_cfg


def _log_row(row: dict) -> None:
    figures = f"loss {row['loss']:.3f} nats/token" if row["status"] == "ok" else row["status"]
    log.info("  length %d: %s", row["eval_length"], figures)


def inspect(cfg: DictConfig) -> dict:
    """Describe the encoding (or checkpoint) of `cfg`: figures, summary.txt and inspect.json."""
    settings = check_inspect_config(cfg, config_dirs())
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    attention, forget_gates = {}, {}
    checkpoint = read_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if checkpoint is not None:
        models, run_cfg = load_variants(cfg, checkpoint)
        if run_cfg.get("task") is not None:  # the attention statistics are measured on held-out text
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path} is a task run (task {run_cfg.task._target_.rsplit('.', 1)[-1]}): "
                "poslab-inspect measures attention on held-out text; give a language-model checkpoint, "
                "or no ckpt_path to describe the encoding itself"
            )
        train_context = int(run_cfg.data.context)
        lengths = inspect_lengths(cfg, train_context)
        with open_dict(cfg):
            cfg.seed = run_cfg.seed
        torch.manual_seed(cfg.seed)
        _, tokens = load_heldout(run_cfg.data, max(cfg.num_tokens, max(lengths)), max(lengths))
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        for name, model in models.items():
            log.info("%s: attention at lengths %s on %d held-out tokens", name, lengths, len(tokens) - 1)
            model.to(device)
            attention[name] = attention_profile(model, tokens, lengths, train_context, device, progress=_log_row)
            gates = mean_log_forget_gates(model, tokens, train_context, device)
            if gates is not None:
                forget_gates[name] = gates
            model.cpu()
        encodings = {name: model.pos_enc for name, model in models.items()}
        geometry_cfg, trained = run_cfg, True
    else:
        train_context = int(cfg.data.context)
        torch.manual_seed(cfg.seed)
        check_encoding_target(cfg.pos_enc)
        encodings = {cfg.pos_enc_name: build_encoding(cfg, cfg.pos_enc)}
        geometry_cfg, trained = cfg, False

    descriptions: dict[str, Description] = {}
    for name, encoding in encodings.items():
        if name in forget_gates:  # FoX's bias has a form only on data: what it did on held-out text
            descriptions[name] = describe_forget_gates(name, forget_gates[name], train_context, settings, folder)
        else:
            descriptions[name] = describe_encoding(name, encoding, train_context, settings, folder, trained)
    families = {family_of(encoding) for encoding in encodings.values()}
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
            "job": "inspect",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "output_dir": str(folder),
            "ckpt_path": str(cfg.ckpt_path) if cfg.get("ckpt_path") else None,
            "trained_as": geometry_cfg.get("pos_enc_name") if trained else None,
            "variants": list(encodings),
            "seed": cfg.seed,
        },
        "config": OmegaConf.to_container(cfg, resolve=True),
        # with a checkpoint: the config it was trained with (model, data, training context)
        "trained_config": checkpoint[CONFIG_KEY] if trained else None,
        "git": git_state(),
        "environment": environment(),
        "train_context": train_context,
        "encodings": {name: {"family": family_of(encodings[name]), **d.numbers} for name, d in descriptions.items()},
        "rotary_members": members.numbers or None,
        "attention": {name: rows for name, rows in attention.items()} or None,
        "figures": [f.name for f in figures],
        "summary": summary,
    }
    write_json_atomically(results, folder / FILENAME)
    log.info("wrote %s and %d figures in %s", FILENAME, len(figures), folder)
    log_inspection(cfg.get("logger"), results, figures)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="inspect")
@guarded_job(job="inspect")
def hydra_main(cfg: DictConfig) -> dict:
    return inspect(cfg)
