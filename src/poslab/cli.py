"""The console scripts' front door: poslab-train, poslab-eval, poslab-inspect, poslab-report.

Each checks its command line before Hydra, torch or Lightning load (a typo is answered in a second,
in one line, exit status 2), then runs its command (poslab.commands), and exits 1 if a sweep had
failed jobs. `poslab-train resume=DIR` re-runs DIR's own command line in DIR (a run or a sweep
folder). What a failing job leaves behind is poslab.commands.job's.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

from poslab.config.command_line import (
    check_group_overrides,
    check_log_folder,
    check_output_folder,
    check_setting_names,
    log_folders,
    sweep_values,
    value_given,
)
from poslab.errors import ConfigError, require_file

log = logging.getLogger("poslab")


def folders_before(argv: list[str]) -> set[Path]:
    """The log folders, their parents and their runs/eval/multirun folders that exist before this
    command runs: removing a rejected run's folder never removes one of them."""
    candidates = []
    try:
        folders = log_folders(argv)
    except ConfigError:  # said by the checks (skipped only for --help, which writes nothing)
        folders = []
    for _, log_dir in folders:
        candidates += [log_dir, *log_dir.parents, *(log_dir / sub for sub in ("runs", "eval", "multirun"))]
    return {folder for folder in candidates if folder.exists()}


def check_command_line(prog: str, argv: list[str], config_name: str) -> None:
    """Check config-group values and setting names on the command line, and the log folder, before
    torch or Lightning load, so a typo is answered in a second or two, in one line."""
    try:
        check_group_overrides(argv)
        check_setting_names(argv, config_name, prog)
        check_log_folder(argv)
    except ConfigError as error:
        fail(prog, str(error))


HELP_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc")


def wants_help(argv: list[str]) -> bool:
    """Hydra's own answers (help, the composed config): they run nothing, so nothing is checked."""
    return any(arg.split("=", 1)[0] in HELP_FLAGS for arg in argv)


def require(prog: str, path: str, key: str) -> list[str]:
    """A path setting must name a file (each file of a sweep over it): said before Hydra starts
    (run folders are named after it). Returns the files."""
    paths = sweep_values(path) or [path]
    for one in paths:
        try:
            require_file(one, key)
        except ConfigError as error:
            fail(prog, str(error))
    return paths


def fail(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def _hydra_quote(value: str) -> str:
    return value if re.fullmatch(r"[\w./-]+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _saved_run_group(folder: Path) -> str | None:
    """The wandb group an earlier attempt used (Hydra saves configs unresolved, so read it from
    what the run itself wrote)."""
    from poslab.records.checkpoints import checkpoint_config
    from poslab.records.results import FILENAME, read_results

    for results in sorted(folder.rglob(FILENAME)):
        try:
            return read_results(results)["run"]["group"]
        except (ValueError, KeyError, OSError):
            continue
    for checkpoint in sorted(folder.rglob("last.ckpt")):
        try:
            return checkpoint_config(checkpoint)["run_group"]
        except (ConfigError, KeyError):
            continue
    return None


def check_train_command_line(prog: str, argv: list[str]) -> list[str]:
    """init_from names a checkpoint that must exist (its context names the run's context), and
    the extension experiment needs one."""
    init_from = value_given(argv, "init_from")
    if init_from not in (None, "", "null"):
        from poslab.records.checkpoints import checkpoint_config  # torch: only when a checkpoint is given

        for path in require(prog, init_from, "init_from"):
            try:
                checkpoint_config(path, key="init_from")  # a text file or a damaged checkpoint, in one line
            except ConfigError as error:
                fail(prog, str(error))
    if "experiment=extend_finetune" in argv and init_from is None:
        fail(prog, "experiment=extend_finetune continues a checkpoint: give init_from=RUN/checkpoints/last.ckpt")
    return resume_command_line(prog, argv)


def resume_command_line(prog: str, argv: list[str]) -> list[str]:
    """`resume=DIR` becomes DIR's own command line, pointed at DIR: its overrides, Hydra's own (a
    sweep's launcher), and the config folders it was given with --config-dir. Hydra then composes
    the same config, and each job finds its checkpoint or its finished results in its folder. A
    job folder of a sweep resumes as one run (hydra.mode=RUN, whatever its experiment says)."""
    resume = [a for a in argv if a.split("=", 1)[0].lstrip("+") == "resume" and "=" in a]
    if not resume:
        if "resume" in argv:
            fail(prog, "resume needs a folder: poslab-train resume=outputs/runs/<run> (or a sweep's folder)")
        return argv
    others = [a for a in argv if a not in resume]
    if len(resume) > 1 or others:
        fail(
            prog,
            "resume=DIR continues a run with its own config; other overrides are not allowed "
            f"(got: {' '.join(others) or ' '.join(resume)})",
        )
    given = resume[0].split("=", 1)[1]
    if not given:
        fail(prog, "resume= needs a folder: poslab-train resume=outputs/runs/<run> (or a sweep's folder)")
    folder = Path(given).expanduser()
    from poslab.records.hydra_files import job_overrides, launch_overrides, sweep_command

    if (sweep := sweep_command(folder)) is not None:
        overrides = sweep[1]
        location = ["-m", f"hydra.sweep.dir={_hydra_quote(str(folder))}"]
    elif (job := job_overrides(folder)) is not None:
        overrides = job
        location = [f"hydra.run.dir={_hydra_quote(str(folder))}", "hydra.mode=RUN"]
    else:
        fail(prog, f"resume={folder}: not a run or sweep folder (no .hydra/overrides.yaml or multirun.yaml inside)")
    check_checkpoints_to_resume(prog, folder)
    hydra_own, config_folders = launch_overrides(folder) or ([], [])
    hydra_own = [o for o in hydra_own if o.partition("=")[0] != "hydra.mode"]
    group = _saved_run_group(folder)
    kept = [o for o in overrides if not o.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "run_group="))]
    extra = [f"run_group={_hydra_quote(group)}"] if group else []
    flags = [f"--config-dir={path}" for path in config_folders]
    log.info("resuming %s with its own overrides: %s", folder, " ".join([*flags, *kept]) or "(none)")
    return [*flags, *location, *hydra_own, *kept, *extra]


def check_checkpoints_to_resume(prog: str, folder: Path) -> None:
    """Every checkpoint resume= would continue (a job without finished results) must be readable:
    a damaged one is said before Hydra writes anything in the folder."""
    from poslab.records.checkpoints import LAST_CHECKPOINT, resumable_checkpoint
    from poslab.records.results import FILENAME, read_results

    for checkpoint in sorted(folder.rglob(str(LAST_CHECKPOINT))):
        job = checkpoint.parent.parent
        try:
            if read_results(job / FILENAME)["status"] == "ok":
                continue  # finished: reused, its checkpoint is not read
        except (OSError, ValueError, KeyError):
            pass
        try:
            resumable_checkpoint(checkpoint)
        except ConfigError as error:
            fail(prog, str(error))


def run_console_script(
    prog: str, config_name: str, load_entry_point: Callable, argv_rewrite: Callable | None = None
) -> None:
    """Check the command line, run the Hydra entry point, and exit 1 if a sweep had failed jobs.
    The entry point is loaded after the checks, so a typo is answered before torch loads."""
    argv = sys.argv[1:]
    if not wants_help(argv):
        check_command_line(prog, argv, config_name)
    existing = folders_before(argv)
    if argv_rewrite is not None and not wants_help(argv):
        argv = argv_rewrite(prog, argv)
        try:
            check_output_folder(argv, prog)
        except ConfigError as error:
            fail(prog, str(error))
    sys.argv = [sys.argv[0], *argv]
    entry_point = load_entry_point()
    from poslab.commands import job
    from poslab.commands.report import sweep_problems

    job.FOLDERS_BEFORE = existing
    job.PROG = prog
    entry_point()
    problems = sweep_problems()
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
    require(prog, ckpt_path, "ckpt_path")
    return argv


def train_main() -> None:
    """The poslab-train console script."""

    def entry_point():
        from poslab.commands.train import hydra_main

        return hydra_main

    run_console_script("poslab-train", "train", entry_point, check_train_command_line)


def eval_main() -> None:
    """The poslab-eval console script."""

    def entry_point():
        from poslab.commands.evaluate import hydra_main

        return hydra_main

    run_console_script("poslab-eval", "eval", entry_point, check_eval_command_line)


def inspect_main() -> None:
    """The poslab-inspect console script."""

    def entry_point():
        from poslab.commands.inspect import hydra_main

        return hydra_main

    def check_checkpoint(prog: str, argv: list[str]) -> list[str]:
        # a checkpoint that is not there is answered before Hydra starts (it names the folder)
        ckpt_path = value_given(argv, "ckpt_path")
        if ckpt_path not in (None, "", "null"):
            require(prog, ckpt_path, "ckpt_path")
        return argv

    run_console_script("poslab-inspect", "inspect", entry_point, check_checkpoint)


def report_main() -> None:
    """The poslab-report console script."""
    from poslab.commands.report import main

    main()


def dashboard_main() -> None:
    """The poslab-dashboard console script."""
    from poslab.commands.dashboard import main

    main()
