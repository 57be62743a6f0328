"""What happens to a job that fails, whichever command it belongs to.

- A bad setting ends a single run in one line and exit status 2, and leaves no run folder; in a
  sweep, it is that job's failure (results.json with status "failed") and the sweep goes on.
- Any other failure writes results.json with status "failed" and traceback.txt in the job's
  folder; a single run exits 1, a sweep goes on with its other jobs and exits 1 at the end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from poslab.config import CONFIG_DIR
from poslab.data.corpora import CorpusUnavailableError
from poslab.errors import ConfigError
from poslab.records.results import record_failure

log = logging.getLogger("poslab")

# Folders that existed before this command ran (the console script sets them, cli.py): removing
# a rejected run's folder never removes one of them, even if it is empty.
FOLDERS_BEFORE: set[Path] | None = None
# The console script's name, for its one-line errors (cli.py sets it)
PROG = "poslab"


def say_error(message: str) -> None:
    """One line on stderr, as the console scripts' front door writes its refusals."""
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def guarded_job(job: str) -> Callable:
    """Wrap a Hydra task function so that no failure costs more than its own job."""

    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(cfg):
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hydra_cfg = HydraConfig.get()
            in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
            output_dir = Path(hydra_cfg.runtime.output_dir)
            try:
                with quiet_libraries():
                    results = function(cfg)
            except (ConfigError, CorpusUnavailableError) as error:
                say_error(str(error))
                if in_sweep:
                    record_failure(cfg, output_dir, error, job=job)  # a finished run in it: kept
                    return None
                remove_rejected_run_folder(output_dir)
                sys.exit(2)
            except Exception as error:
                path = record_failure(cfg, output_dir, error, job=job)
                first_line = str(error).splitlines()[0] if str(error) else ""
                where = f" (traceback: {path.with_name('traceback.txt')})" if path else ""
                say_error(f"{type(error).__name__}: {first_line}{where}")
                if in_sweep:
                    return None
                sys.exit(1)
            if results is not None and results.get("status") != "ok" and not in_sweep:
                sys.exit(1)
            return results

        return wrapper

    return decorator


class _WithoutLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("\U0001f4a1 Tip:")


# what the libraries print in every job that a user does not need: Lightning's "weights_only was not
# set" on every checkpoint, and a deprecation inside Lightning itself
_QUIET_LOGGERS = ("pytorch_lightning.trainer.connectors.checkpoint_connector",)
_QUIET_WARNINGS = (".*isinstance.treespec, LeafSpec.*",)
# what repeats in every job of a sweep: said once, by the first job (the hardware Lightning found,
# "Seed set to", "Trainer.fit stopped")
_FIRST_JOB_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_fabric.utilities.seed",
)


def is_first_job() -> bool:
    """Whether this is the first job of its command (a single run is): the one that still says
    what the others would repeat, model summary included."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return int(HydraConfig.get().job.get("num") or 0) == 0
    except ValueError:  # not under Hydra (a test, a notebook): one job
        return True


@contextlib.contextmanager
def quiet_libraries():
    """While a job runs: quiet what the libraries repeat (see above), and put the logging levels,
    filters and warning filters back as they were afterwards, for whatever runs next in this
    process."""
    import warnings

    first = is_first_job()
    loggers = {name: logging.getLogger(name) for name in (*_QUIET_LOGGERS, *_FIRST_JOB_LOGGERS)}
    levels = {name: logger.level for name, logger in loggers.items()}
    tips = _WithoutLightningTips()
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    with warnings.catch_warnings():
        for pattern in _QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for name in _QUIET_LOGGERS:
            loggers[name].setLevel(logging.WARNING)
        for name in _FIRST_JOB_LOGGERS:
            loggers[name].setLevel(logging.INFO if first else logging.WARNING)
        rank_zero.addFilter(tips)
        try:
            yield
        finally:
            rank_zero.removeFilter(tips)
            for name, level in levels.items():
                loggers[name].setLevel(level)


def config_dirs() -> list[str]:
    """The folders this job's config was composed from, as Hydra searched them: those added with
    --config-dir (or the search path) first, then poslab's own."""
    from hydra.core.hydra_config import HydraConfig

    sources = HydraConfig.get().runtime.get("config_sources") or []
    folders = [s.path for s in sources if s.schema == "file" and s.provider != "main"]
    return [*folders, *(s.path for s in sources if s.schema == "file" and s.provider == "main")] or [CONFIG_DIR]


def remove_rejected_run_folder(output_dir: Path) -> None:
    """Hydra creates the run folder (.hydra/, <job>.log) before the config can be checked. A
    rejected setting should leave nothing behind, so remove exactly that, and only if the folder
    holds nothing else (a resumed or reused folder keeps everything)."""
    if not output_dir.is_dir():
        return
    written_by_hydra = {".hydra"} | {p.name for p in output_dir.glob("*.log")}
    if {p.name for p in output_dir.iterdir()} - written_by_hydra:
        return
    close_log_files_in(output_dir)
    shutil.rmtree(output_dir, ignore_errors=True)
    if FOLDERS_BEFORE is None:  # not started from a console script: leave the parents alone
        return
    for parent in output_dir.resolve().parents:  # runs/ and the log folder, if this command made them
        if parent in FOLDERS_BEFORE:
            break
        try:
            parent.rmdir()
        except OSError:
            break


def close_log_files_in(folder: Path) -> None:
    """Detach and close the logging handlers that write into `folder` (the job's <job>.log)."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            filename = getattr(handler, "baseFilename", None)
            if filename and Path(filename).resolve().is_relative_to(folder.resolve()):
                logger.removeHandler(handler)
                handler.close()
