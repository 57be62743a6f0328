"""poslab-report DIR: every results.json under DIR -> DIR/report.md and plots (--html: report.html);
and the Hydra callback that writes a sweep's report when the sweep ends.

    poslab-report outputs/multirun/<sweep>
    poslab-report --html outputs/multirun/<sweep>
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback

from poslab.report import write_report
from poslab.report.text import one_line

log = logging.getLogger("poslab.report")

# The problems of the last sweep this process reported: the sweep-end callback runs inside Hydra,
# the console script reads them afterwards for its exit status (cli.py).
_last_sweep_problems: list[str] = []


def sweep_problems() -> list[str]:
    """The failed, diverged, unfinished or unreadable jobs of the last sweep this process ran."""
    return list(_last_sweep_problems)


def format_problems(root: str | Path, problems: list[str]) -> str:
    return f"{len(problems)} problem(s) in {root}:\n" + "\n".join(f"  - {problem}" for problem in problems)


class SweepReport(Callback):
    """Hydra callback (conf/hydra/default.yaml): write the report for the sweep folder when a
    multirun ends, and keep its problems for the console script's exit status."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            written = write_report(sweep_dir)
            problems = written.problems or ([] if written.path else [f"{sweep_dir}: no results.json"])
        except Exception as error:  # a report failure must not hide the finished runs
            log.error("report for %s failed: %s", sweep_dir, one_line(error))
            problems = [f"{sweep_dir}: the report could not be written: {one_line(error)}"]
        _last_sweep_problems[:] = problems
        if problems:
            print(format_problems(sweep_dir, problems))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="poslab-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="folder searched recursively for results.json (e.g. outputs/multirun/...)")
    parser.add_argument(
        "--html", action="store_true", help="also write DIR/report.html: one self-contained page, plots inline"
    )
    args = parser.parse_args(argv)
    if not Path(args.dir).is_dir():
        parser.error(f"{args.dir}: not a folder")
    report = write_report(args.dir, html=args.html)
    if report.path is None:
        print(f"poslab-report: error: no results.json under {args.dir}", file=sys.stderr)
        sys.exit(1)
    if report.problems:
        print(format_problems(args.dir, report.problems))
