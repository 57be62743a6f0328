"""Loggers: Weights & Biases (offline unless asked) and a local CSV; the extrapolation metrics
with `extrap/eval_length` as their step, so a dashboard overlays runs by length; the passkey
retrieval grid; and poslab-inspect's attention statistics against `inspect/eval_length`."""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import Logger, WandbLogger

from poslab.diagnostics.attention import STATISTICS
from poslab.encodings import family_of, mechanism_of
from poslab.evaluation.protocols import DEFAULT_PROTOCOL, ExtrapolationRow
from poslab.evaluation.summaries import WITHIN_TOLERANCE, longest_within, mean_accuracy, ratios_to_in_length
from poslab.figures import by_depth, passkey_cell_word, passkey_heatmap, pyplot

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
    # silent: wandb's own lines (its version, the run's history and summary when it ends, a
    # deprecation warning) repeat in every job of a sweep; one line here says where the run is.
    # WANDB_SILENT=false shows them.
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = instantiate(cfg, settings={"init_timeout": WANDB_INIT_TIMEOUT_S})
    # Lightning hands wandb `anonymous=None`, which wandb 0.19+ answers with a deprecation warning
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    run = logger.experiment  # start the run now, so a failure is handled here and not mid-training
    if str(cfg.get("mode") or os.environ.get("WANDB_MODE") or "online") == "offline":
        folder = Path(run.dir).parent
        log.info("wandb: offline run in %s (upload later: wandb sync %s)", folder, folder)
    else:
        log.info("wandb: %s", getattr(run, "url", None) or run.name)
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


def grouping_keys(
    model, *, name: str, trained_as: str, job: str, seed, run_group, train_context, max_steps, task: str | None = None
) -> dict:
    """What a wandb dashboard groups, filters and tabulates runs by, at the top level of the run's
    config (the full config sits under `config`): `pos_enc_name` is the encoding the numbers were
    scored under (an eval variant's own name), `trained_as` the one its weights were trained with,
    `family` and `mechanism` those of the scoring encoding."""
    return {
        "pos_enc_name": name,
        "variant": name,
        "trained_as": trained_as,
        "family": family_of(model.pos_enc),
        "mechanism": mechanism_of(model.pos_enc),
        # the model's settings that compose with any encoding (model.net.sink, logit_temperature)
        "sink": getattr(model, "sink", False),
        "logit_temperature": getattr(model, "logit_temperature", "none"),
        # poslab-eval's eval.window: its method and sizes, e.g. streaming_llm(sinks=4, local=128)
        "window": model.window.label() if getattr(model, "window", None) is not None else None,
        "job": job,
        "task": task,  # the algorithmic task's name; None for a language model
        "seed": seed,
        "run_group": run_group,
        "train_context": train_context,
        "max_steps": max_steps,
        "parameters": model.num_parameters(),
    }


# `extrap/ppl`, `extrap/loss`, `extrap/bpb` and their summaries are the default protocol's
# (nonoverlapping) under every choice of protocols: one name keeps one meaning across runs.
METRICS = ("loss", "ppl", "bpb")
SUMMARIZED = ("ppl", "bpb")  # also as summaries at each eval length, `extrap/ppl@4x`
# perplexity over the same run's in-length perplexity (its perplexity at the training context),
# what an extrapolation claim is about: `extrap/ppl_ratio` and `extrap/ppl_ratio@4x`
RATIO = "ppl_ratio"
# the loss by position in the window, per eval length: `extrap/position_loss@4x` against `extrap/position`
POSITION_LOSS = "position_loss"
# the longest eval length still within 10% of the in-length perplexity (evaluation.summaries)
WITHIN_SUMMARY = "max_len_within_10pct"
LENGTH_STEP = "extrap/eval_length"
POSITION_STEP = "extrap/position"
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
    ratios = {protocol: _ratios(protocol, rows) for protocol in protocols}
    run.define_metric(LENGTH_STEP)
    for protocol in protocols:
        for prefix in metric_prefixes(protocol):
            for metric in (*METRICS, RATIO):
                run.define_metric(f"{prefix}/{metric}", step_metric=LENGTH_STEP)
    # one point per length holding every protocol's numbers
    for length in dict.fromkeys(row.eval_length for row in rows):
        point = {LENGTH_STEP: length}
        for row in rows:
            if row.eval_length == length and row.status == "ok":
                for prefix in metric_prefixes(row.protocol):
                    point.update({f"{prefix}/{metric}": getattr(row, metric) for metric in METRICS})
                    if ratios[row.protocol].get(length) is not None:
                        point[f"{prefix}/{RATIO}"] = ratios[row.protocol][length]
        if len(point) > 1:
            run.log(point)
    for protocol in protocols:
        of_protocol = [row for row in rows if row.protocol == protocol]
        for row in of_protocol:
            for prefix in metric_prefixes(protocol):
                for metric in SUMMARIZED:  # None when not ok: present in the runs table, but no number
                    run.summary[f"{prefix}/{metric}@{row.length_ratio:g}x"] = getattr(row, metric)
                run.summary[f"{prefix}/{RATIO}@{row.length_ratio:g}x"] = ratios[protocol].get(row.eval_length)
        within = longest_within(ratios[protocol], _train_context(of_protocol), WITHIN_TOLERANCE)
        for prefix in metric_prefixes(protocol):
            run.summary[f"{prefix}/{WITHIN_SUMMARY}"] = within
        _log_per_position(run, protocol, of_protocol)
        _log_position_history(run, protocol, of_protocol)
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


def _train_context(rows: list[ExtrapolationRow]) -> int:
    return round(rows[0].eval_length / rows[0].length_ratio)


def _ratios(protocol: str, rows: list[ExtrapolationRow]) -> dict[int, float | None]:
    """Each eval length's perplexity over the same run's in-length perplexity, under `protocol`."""
    of_protocol = [row for row in rows if row.protocol == protocol]
    ppl = {row.eval_length: row.ppl if row.status == "ok" else None for row in of_protocol}
    return ratios_to_in_length(ppl, _train_context(of_protocol))


def _log_position_history(run, protocol: str, rows: list[ExtrapolationRow]) -> None:
    """The loss by position as history against `extrap/position` (the end of each log-spaced bin),
    one metric per eval length (`.../position_loss@16x`): unlike the per-run chart, a dashboard
    panel can average these over seeds and group them by encoding."""
    by_position: dict[int, dict[str, float]] = {}
    for row in rows:
        if row.status != "ok" or not row.per_position:
            continue
        for end, loss in zip(row.per_position["bin_end"], row.per_position["mean_loss"], strict=True):
            if loss is not None:
                for prefix in metric_prefixes(protocol):
                    by_position.setdefault(end, {})[f"{prefix}/{POSITION_LOSS}@{row.length_ratio:g}x"] = loss
    if not by_position:
        return
    run.define_metric(POSITION_STEP)
    for prefix in metric_prefixes(protocol):
        run.define_metric(f"{prefix}/{POSITION_LOSS}@*", step_metric=POSITION_STEP)
    for end in sorted(by_position):
        run.log({POSITION_STEP: end, **by_position[end]})


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
    import wandb

    rows = []
    for length, cells, states in zip(passkey["lengths"], passkey["accuracy"], passkey["status"], strict=True):
        ratio = length / passkey["train_context"]
        rows += [
            [length, ratio, d, a, s, passkey["trials"]]
            for d, a, s in zip(passkey["depths"], cells, states, strict=True)
        ]
        run.summary[f"passkey/accuracy@{ratio:g}x"] = mean_accuracy(cells)
    columns = ["eval_length", "length_ratio", "depth", "accuracy", "status", "trials"]
    figure = passkey_figure(passkey)
    run.log({"passkey/table": wandb.Table(columns=columns, data=rows), "passkey/heatmap": wandb.Image(figure)})
    pyplot().close(figure)
    run.summary["passkey/effective_window"] = passkey["effective_window"]
    run.summary["passkey/in_length_accuracy"] = passkey["in_length_accuracy"]


def passkey_figure(passkey: dict):
    """One run's passkey grid (results.json's "passkey", [length][depth]) as a heatmap figure."""
    plt = pyplot()
    words = [[passkey_cell_word(status) for status in line] for line in by_depth(passkey["status"])]
    figure, axes = plt.subplots(figsize=(1.6 + 0.9 * len(passkey["lengths"]), 1.4 + 0.5 * len(passkey["depths"])))
    image = passkey_heatmap(axes, passkey["lengths"], passkey["depths"], by_depth(passkey["accuracy"]), words)
    axes.set_title(f"passkey retrieval, {passkey['trials']} trials per cell (trained at {passkey['train_context']})")
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    figure.tight_layout()
    return figure


TASK_STEP = "task/length"
TASK_METRICS = ("exact_match", "token_accuracy")
TASK_COLUMNS = [
    "length",
    "length_ratio",
    "sequence_length",
    "status",
    "examples",
    "exact_match",
    "token_accuracy",
    "reason",
]


def task_prefixes(task_name: str) -> list[str]:
    """Where a task's numbers go: task/... (what every task run logs) and task/<name>/..., so a
    dashboard panel of one task needs no filter."""
    return ["task", f"task/{task_name}"]


def log_task(loggers: list[Logger], task: dict) -> None:
    """A task run's accuracies to every wandb logger: task/exact_match and task/token_accuracy
    (and task/<name>/...) against task/length, summaries at each multiple of the longest training
    length (task/exact_match@2x), and the rows as a table."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        prefixes = task_prefixes(task["name"])
        run.define_metric(TASK_STEP)
        for prefix in prefixes:
            for metric in TASK_METRICS:
                run.define_metric(f"{prefix}/{metric}", step_metric=TASK_STEP)
        for row in task["rows"]:
            if row["status"] == "ok":
                run.log({TASK_STEP: row["length"], **{f"{p}/{m}": row[m] for p in prefixes for m in TASK_METRICS}})
            for prefix in prefixes:
                for metric in TASK_METRICS:  # None where not ok: in the runs table, but no number
                    run.summary[f"{prefix}/{metric}@{row['length_ratio']:g}x"] = row[metric]
        data = [[row[c] for c in TASK_COLUMNS] for row in task["rows"]]
        run.log({"task/table": wandb.Table(columns=TASK_COLUMNS, data=data)})


def finish_wandb() -> None:
    """Close the wandb run of this job, so the next job of a sweep starts its own."""
    try:
        import wandb
    except ImportError:  # pragma: no cover - wandb is a dependency
        return
    if wandb.run is not None:
        wandb.finish()


# --- poslab-inspect ---------------------------------------------------------------------------

# figures that describe every variant at once
SHARED_INSPECT_FIGURES = {"rotary_frequency_moves.png", "rotary_interpolated_positions.png", "attention_by_variant.png"}


def log_inspection(logger_cfg: DictConfig | None, results: dict, figures: list[Path]) -> None:
    """One wandb run per variant (one in all without a checkpoint), named by `logger_cfg`'s
    wandb.name with the variant in it, so runs overlay by length: its figures, its geometry numbers
    in the summary, attention per layer and head by length. Nothing with logger=csv (inspect.json
    is the local record)."""
    if not logger_cfg or logger_cfg.get("wandb") is None:
        return
    wandb_cfg = OmegaConf.to_container(logger_cfg.wandb, resolve=True)
    for name in results["run"]["variants"]:
        one = OmegaConf.create({"wandb": {**wandb_cfg, "name": f"inspect-{name}-s{results['run']['seed']}"}})
        try:
            for logger in make_loggers(one):
                import wandb

                run = logger.experiment
                run.config.update({"config": results["config"], "variant": name}, allow_val_change=True)
                own = [f for f in figures if f.name.startswith(f"{name}_") or f.name in SHARED_INSPECT_FIGURES]
                run.log({f"inspect/figure/{f.stem}": wandb.Image(str(f)) for f in own})
                numbers = results["encodings"][name]
                for key in ("turning_pairs", "reach", "critical_dimension", "similarity"):
                    if key in numbers:
                        run.summary[f"inspect/{key}"] = numbers[key]
                _log_attention(run, (results["attention"] or {}).get(name, []))
        finally:
            finish_wandb()


def _log_attention(run, rows: list[dict]) -> None:
    run.define_metric("inspect/eval_length")
    run.define_metric("inspect/*", step_metric="inspect/eval_length")
    for row in rows:
        if row["status"] != "ok":
            continue
        metrics = {"inspect/eval_length": row["eval_length"], "inspect/loss": row["loss"]}
        for layer in row["layers"]:
            for head in layer["heads"]:
                for statistic in STATISTICS:
                    value = head[statistic]
                    if value is not None and np.isfinite(value):
                        metrics[f"inspect/{statistic}/layer{layer['layer']}/head{head['head']}"] = value
        run.log(metrics)
