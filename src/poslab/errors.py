"""The error every command answers in one line, and the one check of a path every layer makes."""

from pathlib import Path


class ConfigError(ValueError):
    """A setting that cannot work. The message is one line: the key (or file), its value, and what
    is allowed. Raised before any training starts; a command prints it and exits with status 2."""


def require_file(path, key: str):
    """`path` (a setting's value) as a Path that names a file; else the one line `KEY=PATH: no such
    file`. The console scripts check it before Hydra starts, the checkpoint reader again."""
    if path in (None, "", "null") or not Path(str(path)).expanduser().is_file():
        raise ConfigError(f"{key}={path}: no such file")
    return Path(str(path)).expanduser()
