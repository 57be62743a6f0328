"""poslab-dashboard: save a wandb view laid out for poslab's runs (records/dashboard.py).

poslab-dashboard --entity ME --project poslab                       a new saved view
poslab-dashboard --entity ME --project poslab --group extrapolation-cpu-2026-11-29_11-22-06
poslab-dashboard --entity ME --project poslab --url 'https://wandb.ai/ME/poslab?nw=...'   update it
poslab-dashboard --entity ME --project poslab --dry-run view.json   write it, contact nothing
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from poslab.evaluation.protocols import PROTOCOLS
from poslab.records.dashboard import poslab_view, specification, to_workspace
from poslab.records.loggers import why_wandb_cannot_go_online
from poslab.report.text import one_line


def _numbers(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, e.g. 1,2,4,8,16; got {text!r}"
        ) from None
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}")
    return values


def _protocols(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in PROTOCOLS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown protocol {', '.join(unknown) or text!r}; available: {', '.join(PROTOCOLS)}"
        )
    return names


def _tasks(text: str) -> list[str]:
    from poslab.config import available

    names, known = [part.strip() for part in text.split(",") if part.strip()], available("task")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task {', '.join(unknown)}; available: {', '.join(known)}")
    return names


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poslab-dashboard",
        description="Save a wandb view laid out for poslab's runs: perplexity and its ratio to the in-length "
        "perplexity against eval length, grouped by encoding (mean, band over seeds), a section per protocol, "
        "passkey, loss by position, training curves, and a runs table of the @Nx and 10-percent summaries.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--entity", default=os.environ.get("WANDB_ENTITY"), help="wandb entity (default: $WANDB_ENTITY)"
    )
    parser.add_argument(
        "--project",
        default=os.environ.get("WANDB_PROJECT", "poslab"),
        help="wandb project (default: poslab, logger.wandb.project's default)",
    )
    parser.add_argument(
        "--group", help="only the runs of this run_group (a sweep; every run of the project without it)"
    )
    parser.add_argument("--name", default=None, help="the view's name (default: 'poslab' and the group)")
    parser.add_argument("--url", help="update this saved view (its URL, with ?nw=...) instead of saving a new one")
    parser.add_argument(
        "--ratios",
        type=_numbers,
        default=[1, 2, 4, 8, 16],
        help="eval lengths as multiples of the training context (eval.lengths_x; default 1,2,4,8,16)",
    )
    parser.add_argument(
        "--passkey-ratios",
        type=_numbers,
        default=[1, 2, 4],
        help="passkey lengths as multiples (eval.passkey.lengths_x; default 1,2,4)",
    )
    parser.add_argument(
        "--protocols",
        type=_protocols,
        default=list(PROTOCOLS),
        help=f"a section per protocol (default {','.join(PROTOCOLS)})",
    )
    parser.add_argument(
        "--tasks",
        type=_tasks,
        default=[],
        help="a section per algorithmic task, e.g. copy,sort (task=NAME runs; default: none)",
    )
    parser.add_argument(
        "--task-ratios",
        type=_numbers,
        default=[1, 1.5, 2, 3, 4],
        help="task test lengths as multiples of the longest training length (task.test_lengths_x; default 1,1.5,2,3,4)",
    )
    parser.add_argument(
        "--dry-run",
        metavar="FILE",
        help="write the view's specification as JSON to FILE (- for standard output) and contact nothing",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not args.entity:
        parser().error("--entity is required (or set WANDB_ENTITY): the wandb user or team that owns the project")
    view = poslab_view(
        args.entity,
        args.project,
        group=args.group,
        name=args.name or ("poslab: " + (args.group or "length extrapolation")),
        ratios=args.ratios,
        passkey_ratios=args.passkey_ratios,
        protocols=args.protocols,
        tasks=args.tasks,
        task_ratios=args.task_ratios,
    )
    if args.dry_run:
        text = json.dumps(specification(view), indent=2) + "\n"
        if args.dry_run == "-":
            sys.stdout.write(text)
        else:
            Path(args.dry_run).write_text(text)
            panels = sum(len(section.panels) for section in view.sections)
            print(
                f"poslab-dashboard: {len(view.sections)} sections, {panels} panels "
                f"written to {args.dry_run}; nothing sent"
            )
        return
    why = why_wandb_cannot_go_online()
    if why:
        print(
            f"poslab-dashboard: error: cannot reach wandb: {why}; --dry-run FILE writes the view without it",
            file=sys.stderr,
        )
        sys.exit(2)
    workspace = to_workspace(view)
    if args.url:
        import wandb_workspaces.workspaces as ws

        saved = ws.Workspace.from_url(args.url)  # keep its identity, replace its layout
        for part in ("name", "sections", "settings", "runset_settings"):
            setattr(saved, part, getattr(workspace, part))
        workspace = saved
    try:
        workspace.save()
    except Exception as error:  # wandb raises its own types for auth, permission and network
        why = f"{type(error).__name__}: {one_line(error)}"
        print(f"poslab-dashboard: error: wandb did not save the view ({why})", file=sys.stderr)
        sys.exit(1)
    print(f"poslab-dashboard: view saved: {workspace.url}")
