"""The command lines that made the runs, as Hydra recorded them beside the results."""

from __future__ import annotations

import logging
from pathlib import Path

from poslab.records.hydra_files import SWEEP_FILE, job_overrides, sweep_command
from poslab.report.grouping import Row
from poslab.report.text import ABSENT, is_unresolved, natural_key, one_line, relative_to_root, value_text

log = logging.getLogger("poslab.report")


def command_lines(rows: list[Row], root: Path) -> list[str]:
    """The command lines that made these runs, as Hydra recorded them: each sweep's own (its
    multirun.yaml) and each row's (its jobs' .hydra/overrides.yaml, the seeds merged into one
    sweep). Where nothing was recorded (results.json files copied on their own), what varies
    between the runs, as overrides."""
    lines = []
    for sweep_file in sorted(root.rglob(SWEEP_FILE)):
        if command := sweep_line(sweep_file):
            lines.append(f"- sweep {relative_to_root(sweep_file.parent, root)}: `{command}`")
    for row in rows:
        if row.measured and (commands := row_commands(row)):
            lines.append(f"- {row.label}: " + ", ".join(f"`{command}`" for command in commands))
    if lines:
        return lines
    varying = varying_overrides(rows)
    return [
        "- not recorded beside the results (no multirun.yaml or .hydra/overrides.yaml); "
        + (f"what varies between the runs: `{varying}`" if varying else "the runs share one config")
    ]


def _program(task: str | None) -> str:
    return "poslab-eval" if task == "eval" else "poslab-train"


def sweep_line(multirun_yaml: Path) -> str | None:
    """The sweep's command line, from its multirun.yaml; a damaged file costs its line, not the report."""
    try:
        config_name, overrides = sweep_command(multirun_yaml.parent)
    except Exception as error:
        log.warning("no command from %s: %s", multirun_yaml, one_line(error))
        return None
    return " ".join([_program(config_name), "-m", *overrides])


def recorded_overrides(folder: Path) -> list[str] | None:
    """The overrides of one job, as Hydra recorded them in its folder (None: none, or unreadable)."""
    try:
        return job_overrides(folder)
    except Exception as error:
        log.warning("no overrides from %s: %s", folder, one_line(error))
        return None


def row_commands(row: Row) -> list[str]:
    """One command for the row: its jobs' overrides, with the values that differ between them (the
    seed) as a sweep; or, where the jobs set different keys, each job's command."""
    recorded = [recorded_overrides(run.folder) for run in row.runs]
    if not recorded or any(overrides is None for overrides in recorded):
        return []
    program = _program(row.experiment.first.job)
    # key -> its values in order; None for an override without a value (~key)
    values: dict[str, list[str | None]] = {}
    for override in recorded[0]:
        values.setdefault(override.partition("=")[0], [])
    if any({override.partition("=")[0] for override in overrides} != values.keys() for overrides in recorded):
        return [" ".join([program, *overrides]) for overrides in recorded]
    for overrides in recorded:
        for override in overrides:
            key, equals, value = override.partition("=")
            if (value if equals else None) not in values[key]:
                values[key].append(value if equals else None)
    multirun = ["-m"] if any(len(seen) > 1 for seen in values.values()) else []
    merged = [key if seen == [None] else f"{key}={','.join(map(str, seen))}" for key, seen in values.items()]
    return [" ".join([program, *multirun, *merged])]


def varying_overrides(rows: list[Row]) -> str:
    """The encodings, the config keys that label the rows and the seeds, with their values, as
    sweep overrides."""
    experiments = list({id(row.experiment): row.experiment for row in rows}.values())
    parts = []
    encodings = sorted({e.first.encoding for e in experiments}, key=natural_key)
    if len(encodings) > 1:
        parts.append(f"pos_enc={','.join(encodings)}")
    for key in sorted({key for e in experiments for key in e.label_keys}):
        seen = {
            value_text(e.config.get(key, ABSENT))
            for e in experiments
            if e.config is not None and not is_unresolved(e.config.get(key))
        }
        parts.append(f"{key}={','.join(sorted(seen, key=natural_key))}")
    seeds = sorted({str(run.seed) for row in rows for run in row.runs}, key=natural_key)
    if len(seeds) > 1:
        parts.append(f"seed={','.join(seeds)}")
    return " ".join(parts)
