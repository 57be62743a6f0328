"""Listings: failed, diverged, unfinished and unreadable jobs; reused and resumed jobs; lengths
without a value, with the reason."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from poslab.records.results import REFUSED_FILENAME
from poslab.report.cells import job_outcome
from poslab.report.grouping import Row
from poslab.report.loading import Collection, Protocol, Run
from poslab.report.text import ROW_STATUS_TEXT, relative_to_root


def problem_lines(found: Collection, root: Path) -> list[str]:
    """One line per failed or diverged job, job folder without results.json, unreadable file."""
    lines = []
    for run in found.runs:
        if run.status == "ok":
            continue
        error = run.results.get("error") or "no error recorded"
        line = f"{relative_to_root(run.folder, root)}: {job_outcome(run)}: {error}"
        if run.results.get("traceback"):
            line += f" (traceback: {relative_to_root(run.folder / run.results['traceback'], root)})"
        lines.append(line)
    lines += [
        f"{relative_to_root(folder, root)}: no results.json (killed, or still running)"
        for folder in found.without_results
    ]
    lines += [f"{relative_to_root(item.path, root)}: unreadable: {item.reason}" for item in found.unreadable]
    for run in found.runs:  # a later job refused in a finished run's folder: the run is kept, the refusal said
        refused = run.folder / REFUSED_FILENAME
        if refused.is_file():
            reason = (refused.read_text().strip().splitlines() or ["no reason recorded"])[0]
            lines.append(f"{relative_to_root(run.folder, root)}: refused (the finished run in it is kept): {reason}")
    return lines


def reuse_lines(runs: list[Run], root: Path) -> list[str]:
    reused = []
    resumed: dict[object, list[str]] = defaultdict(list)
    for run in runs:
        if run.info.get("reused_at"):
            at = run.info["reused_at"]
            at = [at] if isinstance(at, str) else at
            reused.append(f"{relative_to_root(run.folder, root)} (at {', '.join(map(str, at))})")
        if run.info.get("resumed_from_step") is not None:
            resumed[run.info["resumed_from_step"]].append(relative_to_root(run.folder, root))
    lines = [f"- reused: {', '.join(reused)}"] if reused else []
    lines += [f"- resumed from step {step}: {', '.join(folders)}" for step, folders in sorted(resumed.items())]
    return lines


def lengths_without_value_lines(rows: list[Row], protocols: list[Protocol]) -> list[str]:
    """Why a measured row has no number at a length (or no passkey accuracy), once per distinct
    reason; the protocol is named where there are several."""
    lines = []
    for row in rows:
        if not row.measured:
            continue
        for protocol in protocols:
            under = f" ({protocol.title})" if len(protocols) > 1 else ""
            for run in row.runs:
                for length, scored in sorted(run.rows_at(protocol).items()):
                    if scored["status"] != "ok":
                        status = ROW_STATUS_TEXT.get(scored["status"], scored["status"])
                        reason = f": {scored['reason']}" if scored.get("reason") else ""
                        line = f"- {row.label} at {length}{under}: {status}{reason}"
                        if line not in lines:
                            lines.append(line)
        for run in row.runs:
            passkey = run.passkey or {}
            for length, states in zip(passkey.get("lengths", []), passkey.get("status") or [], strict=False):
                if states and states[0] != "ok":
                    reason = (passkey.get("reasons") or {}).get(str(length))
                    status = ROW_STATUS_TEXT.get(states[0], states[0])
                    line = f"- {row.label}, passkey at {length}: {status}" + (f": {reason}" if reason else "")
                    if line not in lines:
                        lines.append(line)
    return lines
