"""What a job prints when it ends: its rows and passkey grid as tables, beside its results.json."""

from __future__ import annotations

import logging

from poslab.evaluation.protocols import ExtrapolationRow
from poslab.records.results import write_results

log = logging.getLogger("poslab")


def format_rows(rows: list[ExtrapolationRow]) -> str:
    lines = [f"{'length':>7} {'x':>5} {'ppl':>9} {'bpb':>7} {'tokens':>8}  status"]
    for r in rows:
        if r.status == "ok":
            figures = f"{r.ppl:>9.3f} {r.bpb:>7.3f} {r.tokens_scored:>8}"
            lines.append(f"{r.eval_length:>7} {r.length_ratio:>5g} {figures}  ok")
        else:
            lines.append(f"{r.eval_length:>7} {r.length_ratio:>5g} {'-':>9} {'-':>7} {'-':>8}  {r.status}: {r.reason}")
    return "\n".join(lines)


def format_passkey(passkey: dict) -> str:
    """The accuracy grid, a line per length, a column per depth."""
    header = f"{'length':>7} " + " ".join(f"{d:>6g}" for d in passkey["depths"])
    lines = [header]
    for length, cells, states in zip(passkey["lengths"], passkey["accuracy"], passkey["status"], strict=True):
        cells = " ".join(f"{a:>6.0%}" if a is not None else f"{s[:6]:>6}" for a, s in zip(cells, states, strict=True))
        lines.append(f"{length:>7} {cells}")
    lines.append(
        f"effective window {passkey['effective_window']} (accuracy >= {passkey['threshold']:g} at every depth), "
        f"in-length accuracy {passkey['in_length_accuracy']}"
    )
    return "\n".join(lines)


def format_task_rows(rows: list[dict]) -> str:
    lines = [f"{'length':>7} {'x':>5} {'tokens':>7} {'exact':>7} {'token':>7}  status"]
    for r in rows:
        head = f"{r['length']:>7} {r['length_ratio']:>5g} {r['sequence_length']:>7}"
        if r["status"] == "ok":
            lines.append(f"{head} {r['exact_match']:>7.3f} {r['token_accuracy']:>7.3f}  ok ({r['examples']} examples)")
        else:
            lines.append(f"{head} {'-':>7} {'-':>7}  {r['status']}: {r['reason']}")
    return "\n".join(lines)


def write_and_show(results: dict, output_dir) -> dict:
    """results.json in the run folder, and its tables on the console."""
    results.setdefault("passkey", None)
    results.setdefault("task", None)
    path = write_results(results, output_dir)
    rows = [ExtrapolationRow(**row) for row in results["extrapolation"]]
    for variant, protocol in dict.fromkeys((row.variant, row.protocol) for row in rows):
        of_them = [row for row in rows if row.variant == variant and row.protocol == protocol]
        stride = "" if protocol == "nonoverlapping" else f", stride {of_them[0].stride}"
        log.info(
            "%s (%s), trained at %s, protocol %s%s:\n%s",
            results["run"]["name"],
            variant,
            results["train"].get("train_context"),
            protocol,
            stride,
            format_rows(of_them),
        )
    if results["passkey"] is not None:
        log.info("%s passkey retrieval:\n%s", results["run"]["name"], format_passkey(results["passkey"]))
    if results.get("task") is not None:
        task = results["task"]
        for variant in dict.fromkeys(row.get("variant") for row in task["rows"]):
            log.info(
                "%s (%s) on %s, trained at lengths %s:\n%s",
                results["run"]["name"],
                variant,
                task["name"],
                task["train_lengths"],
                format_task_rows([row for row in task["rows"] if row.get("variant") == variant]),
            )
    log.info("wrote %s", path)
    return results
