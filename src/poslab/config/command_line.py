"""Checks of a command line made before Hydra, torch or Lightning load, so a typo is answered in a
second, in one line: a config group's value (`pos_enc=rop`) and a sweep launcher's plugin."""

from __future__ import annotations

import importlib.util
import re

from poslab.config import CONFIG_DIR, available
from poslab.errors import ConfigError

_SWEEP_SYNTAX = re.compile(r"^\s*(glob|choice|range|interval|sort|shuffle|tag)\s*\(")


def _extra_config_dirs(argv: list[str]) -> list[str] | None:
    """Config folders added on the command line (--config-dir / -cd); None if the search path is
    changed in a way this check cannot follow (then Hydra alone checks the names)."""
    dirs = []
    for i, arg in enumerate(argv):
        if arg in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(argv[i + 1])
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.lstrip("+").startswith("hydra.searchpath"):
            return None
    return dirs


# Sweep launchers that come from a Hydra plugin: (the plugin's module, the extra that installs it).
# Without the plugin Hydra says only that it "could not load" the launcher's config.
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "launchers"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "slurm_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
}


def check_launcher_plugin(launcher: str) -> None:
    """hydra/launcher=NAME needs its plugin installed: say which, and how."""
    if launcher not in LAUNCHER_PLUGINS:
        return
    module, package, extra = LAUNCHER_PLUGINS[launcher]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # hydra_plugins itself is absent
        found = False
    if not found:
        raise ConfigError(f"hydra/launcher={launcher} needs the {package} plugin: pip install -e '.[{extra}]'")


def check_group_overrides(argv: list[str], config_dir: str = CONFIG_DIR) -> None:
    """`pos_enc=rop` should say which encodings exist. Hydra would also refuse it, but in a
    multi-line message after start-up; this checks plain `group=a,b` overrides up front, and that
    a launcher's plugin is installed."""
    extra_dirs = _extra_config_dirs(argv)
    if extra_dirs is None:
        return
    for override in argv:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "hydra/launcher" and sep:
            check_launcher_plugin(value.strip())
        if not sep or key.startswith("-") or "." in key or "/" in key or value in ("null", ""):
            continue
        if _SWEEP_SYNTAX.match(value):
            continue
        names = available(key, (config_dir, *extra_dirs))
        if not names:
            continue  # not a config group
        unknown = [v for v in value.split(",") if v.strip() not in names]
        if unknown:
            raise ConfigError(f"{key}={','.join(unknown)}: unknown; available: {', '.join(names)}")
