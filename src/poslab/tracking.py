"""Loggers: Weights & Biases (offline unless asked) and a local CSV, plus the extrapolation
metrics with `extrap/eval_length` as their step, so a dashboard overlays runs by length, and the
passkey retrieval grid."""

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

from poslab.config import check_passkey_config, eval_protocols
from poslab.evaluate import ExtrapolationRow, extrapolation_sweep, max_length_within
from poslab.passkey import heatmap_figure, passkey_retrieval
from poslab.results import TRACEBACK_FILENAME, build_results, write_results

log = logging.getLogger(__name__)

WANDB_PROBE_TIMEOUT_S = 5.0
WANDB_INIT_TIMEOUT_S = 20.0

ROW_COLUMNS = [
    "eval_length",
    "length_ratio",
    "protocol",
    "stride",
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


# `extrap/ppl`, `extrap/loss`, `extrap/bpb` and their summaries are the nonoverlapping protocol's,
# as before protocols could be chosen: one name keeps one meaning across runs.
DEFAULT_PROTOCOL = "nonoverlapping"
METRICS = ("loss", "ppl", "bpb")
# the tolerance of `extrap/max_len_within_10pct`
WITHIN = 0.10
PER_POSITION_KEYS = ("bin_start", "bin_end", "mean_loss", "tokens")


def metric_prefixes(protocol: str) -> list[str]:
    """Where a protocol's numbers go: extrap/<protocol>/..., and the plain extrap/... names too
    for the nonoverlapping protocol."""
    return [f"extrap/{protocol}", "extrap"] if protocol == DEFAULT_PROTOCOL else [f"extrap/{protocol}"]


def log_extrapolation(loggers: list[Logger], rows: list[ExtrapolationRow], passkey: dict | None = None) -> None:
    """The rows (and the passkey grid, if scored) to every wandb logger: each protocol its own
    series against extrap/eval_length, summaries the runs table sorts by, the per-position loss
    as line plots, the rows and the passkey grid as tables, the grid as a heatmap."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        run = logger.experiment
        _log_rows(run, rows)
        if passkey is not None:
            _log_passkey(run, passkey)


def _log_rows(run, rows: list[ExtrapolationRow]) -> None:
    import wandb

    protocols = list(dict.fromkeys(row.protocol for row in rows))
    run.define_metric("extrap/eval_length")
    for protocol in protocols:
        for prefix in metric_prefixes(protocol):
            for metric in METRICS:
                run.define_metric(f"{prefix}/{metric}", step_metric="extrap/eval_length")
    # one point per length holding every protocol's numbers
    for length in dict.fromkeys(row.eval_length for row in rows):
        point = {"extrap/eval_length": length}
        for row in rows:
            if row.eval_length == length and row.status == "ok":
                for prefix in metric_prefixes(row.protocol):
                    point.update({f"{prefix}/{metric}": getattr(row, metric) for metric in METRICS})
        if len(point) > 1:
            run.log(point)
    for protocol in protocols:
        of_protocol = [row for row in rows if row.protocol == protocol]
        for row in of_protocol:
            for prefix in metric_prefixes(protocol):
                for metric in ("ppl", "bpb"):  # None when not ok: present in the runs table, but no number
                    run.summary[f"{prefix}/{metric}@{row.length_ratio:g}x"] = getattr(row, metric)
        for prefix in metric_prefixes(protocol):
            run.summary[f"{prefix}/max_len_within_10pct"] = max_length_within(of_protocol, WITHIN)
        _log_per_position(run, protocol, of_protocol)
    table = wandb.Table(columns=ROW_COLUMNS, data=[[getattr(r, c) for c in ROW_COLUMNS] for r in rows])
    run.log({"extrap/table": table})
    bins = [
        [row.protocol, row.eval_length, start, end, loss, tokens]
        for row in rows
        if row.per_position
        for start, end, loss, tokens in zip(*(row.per_position[k] for k in PER_POSITION_KEYS), strict=True)
    ]
    if bins:
        columns = ["protocol", "eval_length", "bin_start", "bin_end", "mean_loss", "tokens"]
        run.log({"extrap/per_position_table": wandb.Table(columns=columns, data=bins)})


def _log_per_position(run, protocol: str, rows: list[ExtrapolationRow]) -> None:
    """One line per eval length: mean loss against window position (the end of each log-spaced
    bin, so a log x axis works); bins with no scored token are left out."""
    import wandb

    series = []
    for row in rows:
        if not row.per_position:
            continue
        points = [
            (end, loss)
            for end, loss in zip(row.per_position["bin_end"], row.per_position["mean_loss"], strict=True)
            if loss is not None
        ]
        series.append((f"length {row.eval_length}", [p[0] for p in points], [p[1] for p in points]))
    if not series:
        return
    plot = wandb.plot.line_series(
        xs=[xs for _, xs, _ in series],
        ys=[ys for _, _, ys in series],
        keys=[key for key, _, _ in series],
        title=f"loss by position in the window ({protocol})",
        xname="position (end of a log-spaced bin)",
    )
    run.log({f"extrap/{protocol}/per_position": plot})


def _log_passkey(run, passkey: dict) -> None:
    import matplotlib.pyplot as plt
    import wandb

    rows = []
    for length, cells, states in zip(passkey["lengths"], passkey["accuracy"], passkey["status"], strict=True):
        ratio = length / passkey["train_context"]
        rows += [
            [length, ratio, d, a, s, passkey["trials"]]
            for d, a, s in zip(passkey["depths"], cells, states, strict=True)
        ]
        scored = [a for a in cells if a is not None]
        run.summary[f"passkey/accuracy@{ratio:g}x"] = sum(scored) / len(scored) if scored else None
    columns = ["eval_length", "length_ratio", "depth", "accuracy", "status", "trials"]
    figure = heatmap_figure(passkey)
    run.log({"passkey/table": wandb.Table(columns=columns, data=rows), "passkey/heatmap": wandb.Image(figure)})
    plt.close(figure)
    run.summary["passkey/effective_window"] = passkey["effective_window"]
    run.summary["passkey/in_length_accuracy"] = passkey["in_length_accuracy"]


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
    results["passkey"] = None
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


def score(
    model,
    heldout,
    lengths: list[int],
    *,
    train_length: int,
    eval_cfg,
    device,
    variant: str,
    scored_bytes: int | None = None,
):
    """The extrapolation sweep of one model (one variant), under each protocol, with progress on
    the console."""
    protocols = eval_protocols(eval_cfg)
    log.info(
        "%s: extrapolation sweep on %d held-out tokens at lengths %s, protocols %s",
        variant,
        len(heldout) - 1,
        lengths,
        ", ".join(protocols),
    )
    rows = extrapolation_sweep(
        model,
        heldout,
        lengths,
        train_length=train_length,
        protocols=protocols,
        stride=eval_cfg.get("stride"),
        batch_tokens=eval_cfg.batch_tokens,
        device=device,
        scored_bytes=scored_bytes,
        progress=lambda row: log.info(
            "  %s length %d: %s",
            row.protocol,
            row.eval_length,
            f"ppl {row.ppl:.3f}" if row.status == "ok" else row.status,
        ),
    )
    for row in rows:
        row.variant = variant
    return rows


def score_passkey(
    model, heldout, *, context: int, train_length: int, eval_cfg, device, variant: str, trained_with_mix: float
) -> dict | None:
    """The passkey grid of one model, filler from the held-out tokens; None when eval.passkey is off."""
    passkey_cfg = eval_cfg.get("passkey")
    lengths = check_passkey_config(passkey_cfg, context, len(heldout) - 1)
    if lengths is None:
        return None
    log.info("%s: passkey retrieval at lengths %s, depths %s", variant, lengths, list(passkey_cfg.depths))
    result = passkey_retrieval(
        model,
        heldout,
        lengths,
        list(passkey_cfg.depths),
        trials=passkey_cfg.trials,
        seed=passkey_cfg.seed,
        train_length=train_length,
        threshold=passkey_cfg.threshold,
        batch_tokens=eval_cfg.batch_tokens,
        device=device,
        progress=lambda length, accuracy, status: log.info(
            "  passkey length %d: %s",
            length,
            ", ".join(f"{a:.0%}" if a is not None else s for a, s in zip(accuracy, status, strict=True)),
        ),
    )
    result.trained_with_mix = trained_with_mix
    result.variant = variant
    return result.to_dict()


def record(results: dict, output_dir) -> dict:
    """results.json in the run folder, and the tables on the console."""
    results.setdefault("passkey", None)
    path = write_results(results, output_dir)
    rows = [ExtrapolationRow(**row) for row in results["extrapolation"]]
    for variant, protocol in dict.fromkeys((row.variant, row.protocol) for row in rows):
        of_them = [row for row in rows if row.variant == variant and row.protocol == protocol]
        stride = "" if protocol == DEFAULT_PROTOCOL else f", stride {of_them[0].stride}"
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
    scored_bytes: int | None = None,
) -> dict:
    """The end of a training job: the extrapolation sweep and the passkey grid, both to wandb,
    results.json in the run folder, and the tables on the console. Returns the results."""
    rows = score(
        model,
        heldout,
        lengths,
        train_length=train_length,
        eval_cfg=eval_cfg,
        device=device,
        variant=run["pos_enc"],
        scored_bytes=scored_bytes,
    )
    passkey = score_passkey(
        model,
        heldout,
        context=config["data"]["context"],
        train_length=train_length,
        eval_cfg=eval_cfg,
        device=device,
        variant=run["pos_enc"],
        trained_with_mix=config["data"].get("passkey_mix", 0.0),
    )
    log_extrapolation(loggers, rows, passkey)
    results = build_results(
        run=run, config=config, data=data, train=train, extrapolation=[row.to_dict() for row in rows]
    )
    results["passkey"] = passkey
    return record(results, output_dir)
