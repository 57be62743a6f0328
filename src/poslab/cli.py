"""The console scripts' front door.

- A bad setting ends a single run in one line and exit status 2, and leaves no run folder.
- Any other failure writes results.json with status "failed" and traceback.txt in the job's
  folder; a single run exits 1, a sweep goes on with its other jobs and exits 1 at the end.
- `poslab-train resume=DIR` re-runs DIR's own command line in DIR (a run or a sweep folder).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from poslab.config import ConfigError, check_group_overrides

log = logging.getLogger("poslab")


def guarded_job(task: str) -> Callable:
    """Wrap a Hydra task function so that no failure costs more than its own job."""

    def decorator(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(cfg):
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            from poslab.data.corpora import CorpusUnavailableError  # here: the front door stays light
            from poslab.tracking import record_failure

            hydra_cfg = HydraConfig.get()
            in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
            output_dir = Path(hydra_cfg.runtime.output_dir)
            try:
                results = function(cfg)
            except (ConfigError, CorpusUnavailableError) as error:
                log.error("%s", error)
                if in_sweep:
                    record_failure(cfg, output_dir, error, task=task)
                    return None
                remove_rejected_run_folder(output_dir)
                sys.exit(2)
            except Exception as error:
                path = record_failure(cfg, output_dir, error, task=task)
                first_line = str(error).splitlines()[0] if str(error) else ""
                log.error("%s: %s (traceback: %s)", type(error).__name__, first_line, path.with_name("traceback.txt"))
                if in_sweep:
                    return None
                sys.exit(1)
            if results is not None and results.get("status") != "ok" and not in_sweep:
                sys.exit(1)
            return results

        return wrapper

    return decorator


# Folders that existed before this command ran (set by the console script): removing a rejected
# run's folder never removes one of them, even if it is empty.
_FOLDERS_BEFORE: set[Path] | None = None


def _remember_folders_before(argv: list[str]) -> None:
    global _FOLDERS_BEFORE
    given = value_given(argv, "paths.log_dir")
    log_dir = Path(given or os.environ.get("POSLAB_LOG_DIR", "outputs")).expanduser().resolve()
    candidates = [log_dir, *log_dir.parents, *(log_dir / sub for sub in ("runs", "eval", "multirun"))]
    _FOLDERS_BEFORE = {folder for folder in candidates if folder.exists()}


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
    if _FOLDERS_BEFORE is None:  # not started from a console script: leave the parents alone
        return
    for parent in output_dir.resolve().parents:  # runs/ and the log folder, if this command made them
        if parent in _FOLDERS_BEFORE:
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


def check_command_line(prog: str, argv: list[str]) -> None:
    """Check config-group names on the command line before Hydra, torch or Lightning load, so a
    typo is answered in a second, in one line."""
    try:
        check_group_overrides(argv)
    except ConfigError as error:
        fail(prog, str(error))


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _hydra_quote(value: str) -> str:
    return value if re.fullmatch(r"[\w./-]+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _saved_run_group(folder: Path) -> str | None:
    """The wandb group an earlier attempt used (Hydra saves configs unresolved, so read it from
    what the run itself wrote)."""
    import json

    for results in sorted(folder.rglob("results.json")):
        try:
            return json.loads(results.read_text())["run"]["group"]
        except (ValueError, KeyError, OSError):
            continue
    for checkpoint in sorted(folder.rglob("last.ckpt")):
        import torch

        try:
            return torch.load(checkpoint, map_location="cpu", weights_only=False)["poslab_config"]["run_group"]
        except Exception:
            continue
    return None


def value_given(argv: list[str], key: str) -> str | None:
    """The last value given on the command line to `key` (or `+key`), None if it is not there."""
    values = [a.split("=", 1)[1] for a in argv if "=" in a and a.split("=", 1)[0].lstrip("+") == key]
    return values[-1] if values else None


def check_train_command_line(prog: str, argv: list[str]) -> list[str]:
    """init_from names a checkpoint that must exist (its context names the run's context), and
    the extension experiment needs one."""
    init_from = value_given(argv, "init_from")
    if init_from not in (None, "", "null") and not Path(init_from).expanduser().is_file():
        fail(prog, f"init_from={init_from}: no such file")
    if "experiment=extend_finetune" in argv and init_from is None:
        fail(prog, "experiment=extend_finetune continues a checkpoint: give init_from=RUN/checkpoints/last.ckpt")
    return resume_command_line(prog, argv)


def resume_command_line(prog: str, argv: list[str]) -> list[str]:
    """`resume=DIR` becomes DIR's own overrides, pointed at DIR: Hydra then composes the same
    config, and each job finds its checkpoint or its finished results in its folder."""
    resume = [a for a in argv if a.split("=", 1)[0].lstrip("+") == "resume"]
    if not resume:
        return argv
    others = [a for a in argv if a not in resume]
    if len(resume) > 1 or others:
        fail(
            prog,
            "resume=DIR continues a run with its own config; other overrides are not allowed "
            f"(got: {' '.join(others) or ' '.join(resume)})",
        )
    folder = Path(resume[0].split("=", 1)[1]).expanduser()
    from omegaconf import OmegaConf

    if (folder / "multirun.yaml").is_file():
        overrides = list(OmegaConf.load(folder / "multirun.yaml").hydra.overrides.task)
        location = ["-m", f"hydra.sweep.dir={_hydra_quote(str(folder))}"]
    elif (folder / ".hydra" / "overrides.yaml").is_file():
        overrides = list(OmegaConf.load(folder / ".hydra" / "overrides.yaml"))
        location = [f"hydra.run.dir={_hydra_quote(str(folder))}"]
    else:
        fail(prog, f"resume={folder}: not a run or sweep folder (no .hydra/overrides.yaml or multirun.yaml inside)")
    group = _saved_run_group(folder)
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "run_group="))]
    extra = [f"run_group={_hydra_quote(group)}"] if group else []
    log.info("resuming %s with its own overrides: %s", folder, " ".join(kept) or "(none)")
    return [*location, *kept, *extra]


def run_console_script(prog: str, load_entry_point: Callable, argv_rewrite: Callable | None = None) -> None:
    """Check the command line, run the Hydra entry point, and exit 1 if a sweep had failed jobs.
    The entry point is loaded after the checks, so a typo is answered before torch loads."""
    argv = sys.argv[1:]
    check_command_line(prog, argv)
    _remember_folders_before(argv)
    if argv_rewrite is not None:
        argv = argv_rewrite(prog, argv)
    sys.argv = [sys.argv[0], *argv]
    load_entry_point()()
    from poslab import report

    problems = getattr(report, "LAST_SWEEP_PROBLEMS", None)
    if problems:
        print(
            f"{prog}: {len(problems)} job(s) of the sweep did not finish ok (listed in its report.md)", file=sys.stderr
        )
        sys.exit(1)


def check_eval_command_line(prog: str, argv: list[str]) -> list[str]:
    """poslab-eval needs a checkpoint that exists; say so before Hydra starts (its run folder is
    named after the checkpoint)."""
    ckpt_path = value_given(argv, "ckpt_path")
    if not ckpt_path:
        fail(prog, "ckpt_path is required: poslab-eval ckpt_path=outputs/runs/<run>/checkpoints/last.ckpt")
    if not Path(ckpt_path).expanduser().is_file():
        fail(prog, f"ckpt_path={ckpt_path}: no such file")
    return argv


def train_main() -> None:
    """The poslab-train console script."""

    def entry_point():
        from poslab.train import hydra_main

        return hydra_main

    run_console_script("poslab-train", entry_point, check_train_command_line)


def eval_main() -> None:
    """The poslab-eval console script."""

    def entry_point():
        from poslab.eval_checkpoint import hydra_main

        return hydra_main

    run_console_script("poslab-eval", entry_point, check_eval_command_line)


def inspect_main() -> None:
    """The poslab-inspect console script."""

    def entry_point():
        from poslab.inspect_encodings import hydra_main

        return hydra_main

    def check_checkpoint(prog: str, argv: list[str]) -> list[str]:
        # a checkpoint that is not there is answered before Hydra starts (it names the folder)
        ckpt_path = value_given(argv, "ckpt_path")
        if ckpt_path not in (None, "", "null") and not Path(ckpt_path).expanduser().is_file():
            fail(prog, f"ckpt_path={ckpt_path}: no such file")
        return argv

    run_console_script("poslab-inspect", entry_point, check_checkpoint)
