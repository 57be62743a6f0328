"""results.json: one schema, written and read here only.

{
  "schema": "poslab.results/3",
  "status": "ok" | "failed" | "diverged",     what happened to the job as a whole
  "error":  null | one line,                   why it failed or diverged
  "traceback": null | "traceback.txt",         the full traceback, a file beside this one
  "run":   {"name", "pos_enc", "seed", "group", "output_dir", "created", "job": "train" | "eval"
            (files before poslab.results/3 call it "task"),
            eval runs also "ckpt_path", "checkpoint_run", "trained_as", "variant";
            "resumed_from_step" when a killed run was continued; "reused_at" when a rerun sweep
            found this job done and kept it},
  "config": the resolved Hydra config (for a job that failed before it resolved: as composed),
  "data":  the corpus fingerprint (files, bytes hash, Python version, tokens per split) or null,
  "git":   {"commit", "dirty"},
  "environment": {"python", "torch", "device", "platform"},
  "train": {"steps", "tokens", "wall_time_s", "tokens_per_s", "parameters", "train_loss",
            "val_loss", "train_context", "diverged_at_step"},
  "extrapolation": [one row per protocol and eval length, protocol by protocol in the order of
                    eval.protocols: eval_length, length_ratio, protocol ("nonoverlapping" |
                    "sliding"), stride (tokens between window starts; the length for
                    nonoverlapping), status ("ok" | "unsupported" | "non_finite" |
                    "out_of_memory"), reason, tokens_scored, bytes_scored, loss, ppl, bpb, variant,
                    per_position: {"bin_start": [...], "bin_end": [...], "mean_loss": [...],
                    "tokens": [...]} (log-spaced bins of window positions [0,1), [1,2), [2,4), ...
                    up to the length; mean_loss null in a bin with no scored token; the bins'
                    token-weighted mean is the row's loss) or null unless ok],
  "passkey": null (eval.passkey.enabled false) | {
      "lengths": [eval lengths], "depths": [key depths, fractions of the filler], "trials": N per
      cell, "seed", "train_context", "threshold", "accuracy": [[per depth] per length] (null unless
      ok), "status": [[per depth] per length] ("ok" | "unsupported" | "out_of_memory"),
      "reasons": {eval length: why it is not ok}, "effective_window": the longest length up to
      which accuracy is >= threshold at every depth, or null, "in_length_accuracy": mean accuracy
      at lengths <= train_context, or null, "trained_with_mix": data.passkey_mix, "variant"},
  "task": null (a language-model run) | {      an algorithmic-task run (task=NAME); "extrapolation" is []
      "name", its settings ("train_lengths", "test_lengths", "examples_per_length", "seed",
      "vocab_size", and the task's own, e.g. "alphabet"),
      "rows": [one per test length: length (input length, in the task's unit), length_ratio (over
               the longest training length), sequence_length (tokens the model reads), status
               ("ok" | "unsupported" | "out_of_memory"), reason, examples, exact_match (greedy
               decoding of the whole target), token_accuracy (answer tokens, teacher-forced)]}
}

A missing "passkey" or "task" (files written before they existed, diverged jobs) reads as null.
Strict JSON: a non-finite number is written as null (its row or job says why), never as NaN.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import traceback
from pathlib import Path

from omegaconf import OmegaConf

SCHEMA = "poslab.results/3"
READABLE_SCHEMAS = ("poslab.results/1", "poslab.results/2", SCHEMA)
FILENAME = "results.json"
TRACEBACK_FILENAME = "traceback.txt"
# beside a finished run's results.json: why a later job in its folder was refused
REFUSED_FILENAME = "refused.txt"
STATUSES = ("ok", "failed", "diverged")

# Config keys that only label, place or display a run: two runs that differ in nothing else are
# the same experiment (seeds are compared separately). A key matches itself and everything below it.
LABEL_KEYS = (
    "run_group",
    # speed settings: the same training up to rounding (results written without them match too)
    "model.compile",
    "model.optimizer.fused",
    "tags",
    "job_name",
    "task_name",  # job_name before poslab.results/3
    "report_note",
    "paths",
    "logger",
    "callbacks.model_checkpoint.dirpath",
    "callbacks.progress_bar",
    "callbacks.learning_rate_monitor",
    "ckpt_path",
    "resume",
    "data.num_workers",
    "data.corpus.cache_dir",
    "eval.batch_tokens",
    "trainer.default_root_dir",
    "trainer.enable_model_summary",
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    # how checkpoints are written, not what is trained (the plugin's import path moved once)
    "trainer.plugins",
    # derived: ${original_context}, which data.context (or init_from's checkpoint) already says
    "model.net.train_context",
)


# The seed, and the keys that follow it (the order of the training windows)
SEED_KEYS = ("seed", "data.seed", "task.seed", "data.task.seed")


def flatten(config: dict | None, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat = {}
    for key, value in (config or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _is_label(key: str, ignore_seed: bool) -> bool:
    keys = (*LABEL_KEYS, *SEED_KEYS) if ignore_seed else LABEL_KEYS
    return any(key == label or key.startswith(label + ".") for label in keys)


# Settings added to the configs after runs were recorded without them, with the value those runs
# had implicitly: a run recorded before and one after compare as the same experiment.
IMPLICIT_DEFAULTS = {
    "model.net.attention": "auto",
    "model.net.sink": False,
    "model.net.logit_temperature": "none",
    "model.net.temperature_scale": None,
    "eval.logit_temperature": None,
    "eval.temperature_scale": None,
    "eval.window.local": None,
    "eval.window.sinks": 4,
    "eval.window.method": "streaming_llm",
    # before tokenizers, the token cache and algorithmic tasks had keys, every run was byte-level,
    # uncached and a language model
    "data.cache_dir": None,
    "data.tokenizer._target_": "poslab.data.ByteTokenizer",
    "data.tokenizer.vocab_size": 256,
    "task": None,
}

# Settings an encoding gained later, at the values that compute what its runs computed before
IMPLICIT_ENCODING_DEFAULTS = {
    "poslab.encodings.RoPEYaRN": {"mscale": None, "mscale_all_dim": None, "attention_factor": None, "truncate": True},
}


def comparable_config(config: dict | None, ignore_seed: bool = True) -> dict:
    """The flattened config without the keys that only label a run (and without the seed unless
    asked): runs with equal comparable configs are the same experiment."""
    flat = flatten(config)
    if config and "model" in config:
        flat = {**{k: v for k, v in IMPLICIT_DEFAULTS.items() if k not in flat}, **flat}
    if flat.get("eval.passkey.enabled") is False:  # its settings change nothing it computes
        flat = {k: v for k, v in flat.items() if not k.startswith("eval.passkey.") or k == "eval.passkey.enabled"}
    added = IMPLICIT_ENCODING_DEFAULTS.get(flat.get("pos_enc._target_"), {})
    flat = {**{f"pos_enc.{k}": v for k, v in added.items() if f"pos_enc.{k}" not in flat}, **flat}
    return {k: v for k, v in flat.items() if not _is_label(k, ignore_seed)}


def config_differences(a: dict | None, b: dict | None, ignore_seed: bool = True) -> list[str]:
    """Dotted keys whose values differ between two configs, labels left out."""
    flat_a, flat_b = comparable_config(a, ignore_seed), comparable_config(b, ignore_seed)
    return sorted(k for k in flat_a.keys() | flat_b.keys() if flat_a.get(k, "<absent>") != flat_b.get(k, "<absent>"))


def finite_or_none(value):
    """Replace non-finite floats (NaN, inf) by None, recursively: strict JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def git_state(cwd: str | Path | None = None) -> dict:
    """The commit the code ran at, and whether the tree had uncommitted changes."""
    where = str(cwd or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=where,
                capture_output=True,
                text=True,
                check=True,
                timeout=10,
            ).stdout.strip()
        )
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def environment() -> dict:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "platform": platform.platform(),
    }


def build_results(
    *,
    run: dict,
    config: dict | None,
    data: dict | None,
    train: dict | None,
    extrapolation: list[dict],
    status: str = "ok",
    error: str | None = None,
    traceback_file: str | None = None,
    passkey: dict | None = None,
    task: dict | None = None,
) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    return {
        "schema": SCHEMA,
        "status": status,
        "error": error,
        "traceback": traceback_file,
        "run": {**run, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "config": config,
        "data": data,
        "git": git_state(),
        "environment": environment(),
        "train": train or {},
        "extrapolation": extrapolation,
        "passkey": passkey,
        "task": task,
    }


def write_text_atomically(text: str, path: str | Path) -> Path:
    """Written to a temporary file and renamed, so a reader never sees half a file and a kill never
    leaves one; a write that fails (a full disk) leaves no temporary file either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomically(payload: dict, path: str | Path) -> Path:
    """Strict JSON (non-finite numbers become null), written atomically (write_text_atomically)."""
    text = json.dumps(finite_or_none(payload), indent=2, allow_nan=False, default=str) + "\n"
    return write_text_atomically(text, path)


def write_results(results: dict, output_dir: str | Path) -> Path:
    return write_json_atomically(results, Path(output_dir) / FILENAME)


def _refuse_constant(token: str):
    raise ValueError(f"non-standard JSON number {token}")


def read_results(path: str | Path) -> dict:
    """Parse strictly (NaN or Infinity tokens are an error) and check the schema. Files of the
    first schema read as status "ok"."""
    results = json.loads(Path(path).read_text(), parse_constant=_refuse_constant)
    if not isinstance(results, dict) or results.get("schema") not in READABLE_SCHEMAS:
        schema = results.get("schema") if isinstance(results, dict) else None
        raise ValueError(f"{path}: schema {schema!r} is not {SCHEMA!r}")
    results.setdefault("status", "ok")
    results.setdefault("error", None)
    return results


def find_results(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob(FILENAME))


def record_failure(cfg, output_dir: str | Path, error: BaseException, *, job: str) -> Path | None:
    """results.json with status "failed" and the error in one line, and the whole traceback in a
    file beside it: what a failed job leaves so a sweep can list it and a person can debug it.

    Never raises: a folder that cannot be written (a full disk) gets nothing, and the failure is
    said on stderr instead. A finished run's results.json is never replaced: the failure is then
    recorded as a refusal beside it (record_refusal). Returns the file written, or None."""
    output_dir = Path(output_dir)
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if is_finished(output_dir):
        return record_refusal(output_dir, message)
    try:
        results = _failure_results(cfg, output_dir, error, message, job)
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomically("".join(traceback.format_exception(error)), output_dir / TRACEBACK_FILENAME)
        return write_results(results, output_dir)
    except Exception as write_error:  # a full disk, a folder that is gone: say it, never raise
        why = getattr(write_error, "strerror", None) or str(write_error).splitlines()[0]
        print(f"{output_dir}: could not record the failure ({why}): {type(error).__name__}: {message}", file=sys.stderr)
        return None


def _failure_results(cfg, output_dir: Path, error: BaseException, message: str, job: str) -> dict:
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # the failure may be the config itself: keep it as composed
        config = OmegaConf.to_container(cfg, resolve=False)
    seed = OmegaConf.select(cfg, "seed", default=None, throw_on_resolution_failure=False)
    name = OmegaConf.select(cfg, "pos_enc_name", default=None, throw_on_resolution_failure=False)
    return build_results(
        run={
            "name": f"{name}-s{seed}",
            "pos_enc": name,
            "seed": seed,
            "group": OmegaConf.select(cfg, "run_group", default=None, throw_on_resolution_failure=False),
            "output_dir": str(output_dir),
            "job": job,
        },
        config=config,
        data=None,
        train=None,
        extrapolation=[],
        status="failed",
        error=f"{type(error).__name__}: {message}",
        traceback_file=TRACEBACK_FILENAME,
    )


def is_finished(folder: str | Path) -> bool:
    """Whether the job folder holds a finished run (a readable results.json with status ok)."""
    try:
        return read_results(Path(folder) / FILENAME)["status"] == "ok"
    except (OSError, ValueError, KeyError):
        return False


def record_refusal(folder: str | Path, message: str) -> Path | None:
    """A job refused in a folder that holds a finished run keeps that run's results.json as it is;
    the refusal is a line of its own beside it (REFUSED_FILENAME), which the report lists, and
    on stderr. A later run that reuses the finished job removes it."""
    folder = Path(folder)
    print(f"{folder}: kept the finished run's {FILENAME}; this job: {message}", file=sys.stderr)
    try:
        return write_text_atomically(message + "\n", folder / REFUSED_FILENAME)
    except OSError:
        return None
