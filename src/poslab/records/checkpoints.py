"""Checkpoints: written atomically, read in one place.

A checkpoint is Lightning's, plus "poslab_config" (the whole resolved run config, so a checkpoint
rebuilds its model, data and training context) and the LightningModule's hyperparameters (the
model and encoding configs). Every command reads one through `read_checkpoint` or, when only the
config is needed (config resolvers, resume), `checkpoint_config`.
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from poslab.errors import ConfigError, require_file

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
CONFIG_KEY = "poslab_config"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the same folder, flush it to disk, then rename over the target.
    A rename within one file system is atomic, so a reader (or a resume) sees either the old
    checkpoint or the new one, never half of one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except (
            BaseException
        ) as error:  # a full disk or a kill mid-write: the previous checkpoint stays, no temporary file
            full = isinstance(error, (OSError, RuntimeError)) and _nearly_full(path.parent)
            tmp.unlink(missing_ok=True)
            if full:  # torch.save says "unexpected pos ... at inline_container.cc": say what it means
                raise OSError(errno.ENOSPC, f"no space left to write {path} (the previous one is kept)") from error
            raise


def _nearly_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """The whole checkpoint at `path`; a file that is missing or not a poslab checkpoint is a
    ConfigError naming `key` (the setting that gave the path)."""
    path = require_file(path, key)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # pickle, zip and torch errors alike: it is not a checkpoint
        raise ConfigError(
            f"{key}={path}: not a poslab checkpoint (torch.load failed: {type(error).__name__})"
        ) from error
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"{key}={path}: not a poslab checkpoint (no {CONFIG_KEY} inside)")
    return checkpoint


def checkpoint_config(path: str | Path, key: str = "ckpt_path") -> dict:
    """The run config a checkpoint was trained with. Read once per file (and version of it),
    however many config resolvers ask."""
    resolved = require_file(path, key)
    stat = resolved.stat()
    return _cached_config(str(resolved.resolve()), stat.st_mtime_ns, stat.st_size, key)


@functools.lru_cache(maxsize=4)
def _cached_config(path: str, mtime_ns: int, size: int, key: str) -> dict:
    return read_checkpoint(path, key)[CONFIG_KEY]


def resumable_checkpoint(path: str | Path) -> dict:
    """A job's own last.ckpt, which `resume=` continues: read whole; a damaged one is a ConfigError
    that says what to do about it."""
    try:
        return read_checkpoint(path, key="resume")
    except ConfigError as error:
        why = str(error).partition("(")[2].rstrip(")") or "not a poslab checkpoint"
        raise ConfigError(
            f"{path} is damaged ({why}): delete it to train this job from the start, or put a good copy back"
        ) from error


def checkpoint_run_name(path: str | Path) -> str:
    """The run folder a checkpoint belongs to (RUN/checkpoints/last.ckpt -> RUN's name)."""
    path = Path(str(path)).expanduser().resolve()
    return path.parent.parent.name if path.parent.name == "checkpoints" else path.stem


def run_folder(path: str | Path) -> Path:
    """RUN for RUN/checkpoints/last.ckpt."""
    return Path(str(path)).expanduser().resolve().parent.parent
