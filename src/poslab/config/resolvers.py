"""The OmegaConf resolvers the configs use (`${poslab.NAME:...}`), registered before Hydra composes
(each command module and each test that composes a config calls `register_resolvers`)."""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf

from poslab.config import names_of
from poslab.data.datamodule import training_positions
from poslab.errors import ConfigError
from poslab.records.checkpoints import checkpoint_config, checkpoint_run_name, run_folder
from poslab.records.hydra_files import job_choice


def _unique_suffix() -> str:
    """A few random hex digits for run-folder names: two runs started in the same second (two
    shells, an array job) never share a folder. Cached per config like Hydra's own `now`."""
    return secrets.token_hex(3)


def _trained_encoding(choice: str | None, ckpt_path: str) -> str:
    """poslab-eval's encoding name: the `pos_enc=` given, else the one the checkpoint was trained
    with (read from its run folder's .hydra/; "trained" when the checkpoint sits elsewhere)."""
    return choice or job_choice(run_folder(ckpt_path), "pos_enc") or "trained"


def _inspect_name(choice: str | None, ckpt_path: str | None, variant) -> str:
    """poslab-inspect's output folder name: the encoding, or the checkpoint's run and the variant(s)."""
    if not ckpt_path:
        return choice or "none"
    names = names_of(variant) or [_trained_encoding(None, ckpt_path)]
    return f"{checkpoint_run_name(ckpt_path)}_{'+'.join(names)}"


def _scored_names(pos_enc_name: str, variants) -> str:
    """poslab-eval's folder name part: the variants joined by '+' (eval.variants), else the one
    encoding scored, as poslab-inspect names its folders."""
    return "+".join(names_of(variants)) or str(pos_enc_name)


def _checkpoint_context(ckpt_path: str) -> int:
    """The training context of a checkpoint."""
    return int(checkpoint_config(ckpt_path, key="init_from")["data"]["context"])


def _original_context(init_from: str | None, context: int) -> int:
    """The context weights were first trained at: this run's, or, continuing a checkpoint, the
    checkpoint's own original context."""
    if not init_from:
        return context
    saved = checkpoint_config(init_from, key="init_from")
    return int(saved.get("original_context") or saved["data"]["context"])


def _times(factor, value) -> int:
    product = float(factor) * float(value)
    if not product.is_integer():
        raise ConfigError(f"{factor} x {value} is not a whole number of tokens")
    return int(product)


def _study(experiment: str | None) -> str | None:
    """An experiment's name as a label: all_encodings -> all-encodings (None without one)."""
    return experiment.replace("_", "-") if experiment else None


def _run_group(experiment: str | None, started: str) -> str:
    """The wandb group of a run or sweep: the experiment's name and the start time."""
    return f"{_study(experiment)}-{started}" if experiment else started


def _tags(pos_enc_name: str, context, experiment: str | None) -> list[str]:
    """wandb tags: the encoding, the training context, and the experiment's name."""
    return [str(pos_enc_name), f"context-{context}", *([_study(experiment)] if experiment else [])]


RESOLVERS = {
    "poslab.unique": _unique_suffix,
    "poslab.checkpoint_run": checkpoint_run_name,
    "poslab.trained_encoding": _trained_encoding,
    "poslab.inspect_name": _inspect_name,
    "poslab.scored_names": _scored_names,
    "poslab.position_range": training_positions,
    "poslab.checkpoint_context": _checkpoint_context,
    "poslab.original_context": _original_context,
    "poslab.times": _times,
    "poslab.run_group": _run_group,
    "poslab.tags": _tags,
}


# Cached per config: the folder suffix must be the same every time a config reads it. The others
# are functions of their arguments, read afresh (a cache keyed by the arguments' text would keep a
# value across the configs of one process, e.g. Hydra's own config of the next run).
CACHED = {"poslab.unique"}


def register_resolvers() -> None:
    for name, function in RESOLVERS.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function, use_cache=name in CACHED)


__all__ = ["register_resolvers"]
