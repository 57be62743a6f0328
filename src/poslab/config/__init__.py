"""Settings: where the Hydra configs are and which exist (here), and in the submodules every check
of a setting (`validate`, one place per key), the checks of a command line made before anything
loads (`command_line`), the conf/pos_enc registry by family (`registry`) and the OmegaConf
resolvers the configs use (`resolvers`).

This module stays light (no torch): the console scripts' front door reads it first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from poslab.errors import ConfigError

# The configs ship inside the package (poslab/conf), so an installed poslab finds them;
# POSLAB_CONFIG_DIR points elsewhere, and Hydra's --config-dir adds a folder of your own.
CONFIG_DIR = os.environ.get("POSLAB_CONFIG_DIR", str(Path(__file__).resolve().parents[1] / "conf"))

__all__ = ["CONFIG_DIR", "ConfigError", "available", "load_choice", "names_of"]


def names_of(value) -> list[str]:
    """A setting that takes one config name or a list of them (variant=, eval.variants=) as a list."""
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple, ListConfig)) else [str(value)]


def available(group: str, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> list[str]:
    """The choices of a config group: the names of its YAML files, in any of the config folders
    (poslab's own and those added with --config-dir)."""
    folders = [Path(folder) / group for folder in config_dirs]
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


def load_choice(group: str, name: str, config_dirs: Sequence[str] = (CONFIG_DIR,)) -> DictConfig:
    """GROUP/NAME.yaml as written (unresolved), from the first config folder that has it ("" for
    the group: a primary config such as train.yaml)."""
    for folder in config_dirs:
        if (path := Path(folder, group, f"{name}.yaml")).is_file():
            return OmegaConf.load(path)
    raise FileNotFoundError(f"{group}/{name}.yaml is in none of {', '.join(map(str, config_dirs))}")
