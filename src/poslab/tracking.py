"""Loggers: Weights & Biases (offline unless asked) and a local CSV, plus the extrapolation
metrics with `extrap/eval_length` as their step, so a dashboard overlays runs by length."""

from __future__ import annotations

import logging
import netrc
import os
import socket
import traceback
from pathlib import Path
from urllib.parse import urlparse

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger, WandbLogger

from poslab.evaluate import ExtrapolationRow, extrapolation_sweep
from poslab.results import TRACEBACK_FILENAME, build_results, write_results

log = logging.getLogger(__name__)

WANDB_PROBE_TIMEOUT_S = 5.0
WANDB_INIT_TIMEOUT_S = 20.0

ROW_COLUMNS = [
    "eval_length",
    "length_ratio",
    "protocol",
    "status",
    "tokens_scored",
    "loss",
    "ppl",
    "bpb",
    "reason",
    "variant",
]


def _wandb_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    return url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)


def _wandb_api_key(host: str) -> str | None:
    if os.environ.get("WANDB_API_KEY"):
        return os.environ["WANDB_API_KEY"]
    try:
        entry = netrc.netrc(os.environ.get("NETRC")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def why_wandb_cannot_go_online() -> str | None:
    """None if an online wandb run can start here; otherwise the reason, in a few words. Checked
    up front because wandb itself either raises after a prompt (no key) or retries for minutes
    (no network)."""
    host, port = _wandb_host()
    if not _wandb_api_key(host):
        return f"no API key for {host} (set WANDB_API_KEY or run `wandb login`)"
    try:
        with socket.create_connection((host, port), timeout=WANDB_PROBE_TIMEOUT_S):
            return None
    except OSError as error:
        return f"{host}:{port} is unreachable ({error.strerror or error})"


def _online(cfg: DictConfig) -> bool:
    mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or "online"
    return str(mode) == "online"


def _start_wandb(cfg: DictConfig) -> WandbLogger:
    logger = instantiate(cfg, settings={"init_timeout": WANDB_INIT_TIMEOUT_S})
    logger.experiment  # noqa: B018 - start the run now, so a failure is handled here and not mid-training
    return logger


def make_wandb_logger(cfg: DictConfig) -> WandbLogger:
    """A WandbLogger that never costs the run: online without credentials or network falls back
    to offline with one warning (the offline folder can be uploaded later with `wandb sync`)."""
    why = why_wandb_cannot_go_online() if _online(cfg) else None
    if why is None:
        try:
            return _start_wandb(cfg)
        except Exception as error:  # wandb raises its own error types for auth and network
            if not _online(cfg):
                raise
            why = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            finish_wandb()
    log.warning("wandb: cannot log online (%s); logging offline instead, upload later with `wandb sync`", why)
    offline = cfg.copy()
    with open_dict(offline):
        offline.mode = "offline"
    return _start_wandb(offline)


def make_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    loggers = []
    for cfg in (logger_cfg or {}).values():
        if cfg is None or "_target_" not in cfg:
            continue
        is_wandb = cfg._target_.rsplit(".", 1)[-1] == "WandbLogger"
        loggers.append(make_wandb_logger(cfg) if is_wandb else instantiate(cfg))
    return loggers


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


def record_failure(cfg: DictConfig, output_dir: str | Path, error: BaseException, *, task: str) -> Path:
    """results.json with status "failed" and the error in one line, and the whole traceback in a
    file beside it: what a failed job leaves so a sweep can list it and a person can debug it."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / TRACEBACK_FILENAME).write_text("".join(traceback.format_exception(error)))
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the failure may be the config itself: keep it as composed
        config = OmegaConf.to_container(cfg, resolve=False)
    seed = OmegaConf.select(cfg, "seed", default=None, throw_on_resolution_failure=False)
    name = OmegaConf.select(cfg, "pos_enc_name", default=None, throw_on_resolution_failure=False)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    results = build_results(
        run={
            "name": f"{name}-s{seed}",
            "pos_enc": name,
            "seed": seed,
            "group": OmegaConf.select(cfg, "run_group", default=None, throw_on_resolution_failure=False),
            "output_dir": str(output_dir),
            "task": task,
        },
        config=config,
        data=None,
        train=None,
        extrapolation=[],
        status="failed",
        error=f"{type(error).__name__}: {message}",
        traceback_file=TRACEBACK_FILENAME,
    )
    return write_results(results, output_dir)


def format_rows(rows: list[ExtrapolationRow]) -> str:
    lines = [f"{'length':>7} {'x':>5} {'ppl':>9} {'bpb':>7} {'tokens':>8}  status"]
    for r in rows:
        if r.status == "ok":
            figures = f"{r.ppl:>9.3f} {r.bpb:>7.3f} {r.tokens_scored:>8}"
            lines.append(f"{r.eval_length:>7} {r.length_ratio:>5g} {figures}  ok")
        else:
            lines.append(f"{r.eval_length:>7} {r.length_ratio:>5g} {'-':>9} {'-':>7} {'-':>8}  {r.status}: {r.reason}")
    return "\n".join(lines)


def score(model, heldout, lengths: list[int], *, train_length: int, eval_cfg, device, variant: str):
    """The extrapolation sweep of one model (one variant), with progress on the console."""
    log.info("%s: extrapolation sweep on %d held-out tokens at lengths %s", variant, len(heldout) - 1, lengths)
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
    for row in rows:
        row.variant = variant
    return rows


def record(results: dict, output_dir) -> dict:
    """results.json in the run folder, and the table on the console."""
    path = write_results(results, output_dir)
    rows = [ExtrapolationRow(**row) for row in results["extrapolation"]]
    for variant in dict.fromkeys(row.variant for row in rows):
        table = format_rows([row for row in rows if row.variant == variant])
        log.info(
            "%s (%s), trained at %s:\n%s", results["run"]["name"], variant, results["train"].get("train_context"), table
        )
    log.info("wrote %s", path)
    return results


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
    """The end of a training job: the extrapolation sweep, the rows to wandb, results.json in
    the run folder, and the table on the console. Returns the results."""
    rows = score(
        model, heldout, lengths, train_length=train_length, eval_cfg=eval_cfg, device=device, variant=run["pos_enc"]
    )
    log_extrapolation(loggers, rows)
    results = build_results(
        run=run, config=config, data=data, train=train, extrapolation=[row.to_dict() for row in rows]
    )
    return record(results, output_dir)
