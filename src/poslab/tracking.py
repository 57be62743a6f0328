"""Loggers: Weights & Biases (offline unless asked) and a local CSV, plus the extrapolation
metrics with `extrap/eval_length` as their step, so a dashboard overlays runs by length."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, WandbLogger

from poslab.evaluate import ExtrapolationRow, extrapolation_sweep
from poslab.results import build_results, write_results

log = logging.getLogger(__name__)

ROW_COLUMNS = ["eval_length", "length_ratio", "protocol", "status", "tokens_scored", "loss", "ppl", "bpb", "reason"]


def make_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    if not logger_cfg:
        return []
    return [instantiate(cfg) for cfg in logger_cfg.values() if cfg is not None and "_target_" in cfg]


def summary_key(row: ExtrapolationRow, metric: str = "ppl") -> str:
    return f"extrap/{metric}@{row.length_ratio:g}x"


def log_extrapolation(loggers: list[Logger], rows: list[ExtrapolationRow]) -> None:
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        run.define_metric("extrap/eval_length")
        for metric in ("loss", "ppl", "bpb"):
            run.define_metric(f"extrap/{metric}", step_metric="extrap/eval_length")
        for row in rows:
            if row.status != "ok":
                run.summary[summary_key(row)] = None
                continue
            run.log(
                {
                    "extrap/eval_length": row.eval_length,
                    "extrap/loss": row.loss,
                    "extrap/ppl": row.ppl,
                    "extrap/bpb": row.bpb,
                }
            )
            run.summary[summary_key(row)] = row.ppl
            run.summary[summary_key(row, "bpb")] = row.bpb
        table = wandb.Table(columns=ROW_COLUMNS, data=[[getattr(r, c) for c in ROW_COLUMNS] for r in rows])
        run.log({"extrap/table": table})


def finish_wandb() -> None:
    """Close the wandb run of this job, so the next job of a sweep starts its own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


def format_rows(rows: list[ExtrapolationRow]) -> str:
    lines = [f"{'length':>7} {'x':>5} {'ppl':>9} {'bpb':>7} {'tokens':>8}  status"]
    for r in rows:
        if r.status == "ok":
            figures = f"{r.ppl:>9.3f} {r.bpb:>7.3f} {r.tokens_scored:>8}"
            lines.append(f"{r.eval_length:>7} {r.length_ratio:>5g} {figures}  ok")
        else:
            lines.append(f"{r.eval_length:>7} {r.length_ratio:>5g} {'-':>9} {'-':>7} {'-':>8}  {r.status}: {r.reason}")
    return "\n".join(lines)


def score_and_record(
    model,
    heldout,
    lengths: list[int],
    *,
    train_length: int,
    eval_cfg,
    device,
    loggers: list[Logger],
    run: dict,
    config: dict,
    data: dict,
    train: dict,
    output_dir,
) -> dict:
    """The end of every job, trained or loaded: the extrapolation sweep, results.json in the run
    folder, the same rows to wandb, and the table on the console. Returns the results."""
    log.info("extrapolation sweep on %d held-out tokens at lengths %s", len(heldout) - 1, lengths)
    rows = extrapolation_sweep(
        model,
        heldout,
        lengths,
        train_length=train_length,
        protocol=eval_cfg.protocol,
        batch_tokens=eval_cfg.batch_tokens,
        device=device,
        progress=lambda row: log.info(
            "  length %d: %s", row.eval_length, f"ppl {row.ppl:.3f}" if row.status == "ok" else row.status
        ),
    )
    results = build_results(
        run=run, config=config, data=data, train=train, extrapolation=[row.to_dict() for row in rows]
    )
    path = write_results(results, output_dir)
    log_extrapolation(loggers, rows)
    log.info("%s, trained at %d:\n%s\nwrote %s", run["name"], train_length, format_rows(rows), path)
    return results
