"""Checks of a command line made before torch or Lightning load and before Hydra writes anything,
so a typo is answered in a second or two, in one line: a config group's value (`pos_enc=rop`,
`data/tokenizer=bpee`), a setting's name (`trainer.max_step=20`, with the closest ones), a sweep
launcher's plugin, a log folder that cannot be written, and a run or sweep folder that holds the
work of another command."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from pathlib import Path

from poslab.config import CONFIG_DIR, available
from poslab.errors import ConfigError

_SWEEP_SYNTAX = re.compile(r"^\s*(glob|choice|range|interval|sort|shuffle|tag)\s*\(")


def sweep_values(value: str) -> list[str] | None:
    """The values a command-line override takes: `a,b` is a sweep over a and b (commas inside
    brackets or quotes do not split), a quoted value is unquoted; None for Hydra's sweep functions
    (glob(...), range(...)), whose values this check does not work out."""
    if _SWEEP_SYNTAX.match(value):
        return None
    values, depth, quote, current = [], 0, None, ""
    for char in value:
        if quote:
            if char == quote:
                quote = None
            else:
                current += char
            continue
        if char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
            current += char
        elif char in "]})":
            depth -= 1
            current += char
        elif char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    return [*values, current.strip()]


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
    multi-line message after start-up; this checks `group=a,b` overrides up front (a nested group
    too: data/tokenizer=bpe), and that a launcher's plugin is installed."""
    extra_dirs = _extra_config_dirs(argv)
    if extra_dirs is None:
        return
    for override in argv:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "hydra/launcher" and sep:
            check_launcher_plugin(value.strip())
        if not sep or key.startswith(("-", "hydra")) or "." in key or value in ("null", ""):
            continue
        values = sweep_values(value)
        if values is None:
            continue
        names = available(key, (config_dir, *extra_dirs))
        if not names:
            continue  # not a config group
        unknown = [v for v in values if v not in names]
        if unknown:
            raise ConfigError(f"{key}={','.join(unknown)}: unknown; available: {', '.join(names)}")


# A setting that belongs to another command: what to type instead.
OTHER_COMMANDS = {
    ("train", "ckpt_path"): "to continue a killed run use poslab-train resume=RUN_DIR; to score a checkpoint "
    "use poslab-eval ckpt_path=...",
}


def check_setting_names(argv: list[str], config_name: str, prog: str, config_dir: str = CONFIG_DIR) -> None:
    """Every `key=value` override names a setting the command's config has (Hydra's own refusal is
    a page, after start-up): the config is composed with the command line's group choices, and a
    key that is not in it is answered with the closest ones. `+key=` adds a key on purpose and is
    left to the checks of the composed config."""
    extra_dirs = _extra_config_dirs(argv)
    if extra_dirs is None:
        return
    keys = [o.partition("=")[0] for o in argv if "=" in o and not o.startswith(("-", "+", "~"))]
    keys = [k for k in keys if not k.startswith("hydra.") and not k.startswith("hydra/") and k != "resume"]
    added = [o.partition("=")[0][1:] for o in argv if "=" in o and o.startswith("+") and not o.startswith("++")]
    added = [k for k in added if "." in k and not k.startswith("hydra")]
    if not keys and not added:
        return
    folders = (config_dir, *extra_dirs)
    groups = [k for k in keys if "." not in k and ("/" in k or available(k, folders))]
    # a group swept with glob(...) may choose configs with other keys than its default: the keys
    # under it are left to Hydra
    globbed = [
        o.partition("=")[0] for o in argv if o.partition("=")[0] in groups and sweep_values(o.partition("=")[2]) is None
    ]
    settings = [k for k in keys if k not in groups and not k.startswith(tuple(f"{g}." for g in globbed))]
    if not settings and not added:
        return
    composed = _compose(config_name, [o for o in argv if o.partition("=")[0] in groups], folders)
    if composed is None:
        return  # something this check cannot follow: Hydra will say it
    for key in added:  # Hydra refuses to add what is there already, in a page
        parent_key, _, name = key.rpartition(".")
        if _has(_select(composed, parent_key), name):
            raise ConfigError(f"+{key}: {key} is a setting already; give {key}=VALUE (without the +)")
    for key in settings:
        if (config_name, key) in OTHER_COMMANDS:
            raise ConfigError(f"{key} is not a {prog} setting: {OTHER_COMMANDS[config_name, key]}")
        parent_key, _, name = key.rpartition(".")
        parent = _select(composed, parent_key)
        if parent is None:
            missing = _first_missing(composed, key)
            raise ConfigError(f"{key}: no setting {missing} in {prog}'s config{_closest(composed, missing)}")
        if not _has(parent, name):
            raise ConfigError(f"{key}: not a setting of {prog}{_closest(composed, key)}")


def _compose(config_name: str, overrides: list[str], folders: tuple[str, ...]):
    """The command's config composed with these group overrides (sweep values: the first), or None."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    chosen = []
    for override in overrides:
        key, _, value = override.partition("=")
        values = sweep_values(value)
        if values is None:
            continue  # glob(*) and the like: composed with the default (the keys under it are not checked)
        chosen.append(f"{key}={values[0]}")
    search = [f"hydra.searchpath=[{','.join('file://' + str(Path(f).resolve()) for f in folders[1:])}]"]
    try:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(Path(folders[0]).resolve()), version_base="1.3"):
            return compose(config_name=config_name, overrides=[*chosen, *(search if folders[1:] else [])])
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()


def _has(node, key: str) -> bool:
    # keys(), not `in`: a value still to be given (???) is a setting all the same
    return hasattr(node, "keys") and key in list(node.keys())


def _select(config, dotted: str):
    node = config
    for part in dotted.split(".") if dotted else []:
        if not _has(node, part):
            return None
        node = node._get_node(part) if hasattr(node, "_get_node") else node[part]
    return node


def _first_missing(config, dotted: str) -> str:
    """The first part of a dotted key that the config does not have, as a dotted prefix."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        if _select(config, ".".join(parts[:i])) is None:
            return ".".join(parts[:i])
    return dotted


def _closest(config, dotted: str) -> str:
    """'; did you mean a.b?' with the settings whose names are closest, among the siblings."""
    parent_key, _, name = dotted.rpartition(".")
    parent = _select(config, parent_key)
    siblings = [str(k) for k in parent.keys()] if hasattr(parent, "keys") else []
    close = difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)
    prefix = f"{parent_key}." if parent_key else ""
    if close:
        return "; did you mean " + " or ".join(f"{prefix}{c}" for c in close) + "?"
    return f"; {prefix or 'the top-level '}settings: " + ", ".join(sorted(siblings)) if siblings else ""


def log_folders(argv: list[str]) -> list[tuple[str, Path]]:
    """Where the command writes its runs, (the setting that says so, the folder): paths.log_dir
    on the command line (each value of a sweep over it), else POSLAB_LOG_DIR, else outputs/."""
    given = value_given(argv, "paths.log_dir")
    if given is not None:
        return [("paths.log_dir", Path(value).expanduser().resolve()) for value in sweep_values(given) or [given]]
    if "POSLAB_LOG_DIR" in os.environ:
        if not os.environ["POSLAB_LOG_DIR"].strip():
            raise ConfigError("POSLAB_LOG_DIR is set but empty: unset it (runs go to outputs/) or give a folder")
        return [("POSLAB_LOG_DIR", Path(os.environ["POSLAB_LOG_DIR"]).expanduser().resolve())]
    return [("paths.log_dir", Path("outputs").resolve())]


def check_log_folder(argv: list[str]) -> None:
    """The log folder must be a folder this user can write in, or create."""
    for key, folder in log_folders(argv):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"{key}={folder}: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(
                f"{key}={folder}: {existing} cannot be written (read-only or not yours); give another folder"
            )


def value_given(argv: list[str], key: str) -> str | None:
    """The last value given on the command line to `key` (or `+key`), None if it is not there."""
    values = [a.split("=", 1)[1] for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else None


def _command_of(overrides: list[str]) -> dict[str, str]:
    """The overrides that make a run what it is, key -> value (the last one given wins): not
    Hydra's own (where it goes, how it launches), nor the wandb group it is labelled with."""
    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra", "run_group="))]
    return {o.partition("=")[0]: o.partition("=")[2] for o in kept}


def check_output_folder(argv: list[str], prog: str) -> None:
    """hydra.run.dir=DIR or hydra.sweep.dir=DIR naming a folder that holds another command's run or
    sweep is refused before Hydra writes its .hydra/ files or multirun.yaml there: the run in it
    is kept as it is. The same command again (as resume= gives it) continues it."""
    from poslab.records.hydra_files import JOB_OVERRIDES, SWEEP_FILE, job_overrides, sweep_command

    command = _command_of([a for a in argv if "=" in a and not a.startswith("-")])
    for key, recorded_file in (("hydra.sweep.dir", SWEEP_FILE), ("hydra.run.dir", str(JOB_OVERRIDES))):
        given = value_given(argv, key)
        if not given or not Path(given).expanduser().is_dir():
            continue
        folder = Path(given).expanduser()
        try:
            recorded = sweep_command(folder) if key == "hydra.sweep.dir" else job_overrides(folder)
        except Exception:
            raise ConfigError(f"{key}={given}: its {recorded_file} cannot be read; give another folder") from None
        if recorded is None:
            if any(folder.rglob("results.json")) or any(folder.rglob("last.ckpt")):
                raise ConfigError(f"{key}={given} holds runs that Hydra did not record; give another folder")
            continue
        overrides = _command_of(recorded[1] if key == "hydra.sweep.dir" else recorded)
        if overrides != command:
            differ = sorted(k for k in overrides.keys() | command.keys() if overrides.get(k) != command.get(k))
            ran = " ".join(f"{k}={overrides[k]}" for k in differ if k in overrides) or "no such override"
            gives = " ".join(f"{k}={command[k]}" for k in differ if k in command) or "none of them"
            raise ConfigError(
                f"{key}={given} holds the work of another command (it ran with {ran}; this one gives {gives}); "
                f"continue it with {prog} resume={given}, or give another folder"
            )
