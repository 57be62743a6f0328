"""results.json: one schema, written and read here only.

{
  "schema": "poslab.results/1",
  "run":   {"name", "pos_enc", "seed", "group", "output_dir", "created"},
  "config": the resolved Hydra config,
  "data":  the corpus fingerprint (files, bytes hash, Python version, tokens per split),
  "git":   {"commit", "dirty"},
  "environment": {"python", "torch", "device", "platform"},
  "train": {"steps", "tokens", "wall_time_s", "tokens_per_s", "parameters", "train_loss", "val_loss"},
  "extrapolation": [ExtrapolationRow as a dict, one per eval length]
}
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

SCHEMA = "poslab.results/1"
FILENAME = "results.json"


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


def build_results(*, run: dict, config: dict, data: dict, train: dict, extrapolation: list[dict]) -> dict:
    return {
        "schema": SCHEMA,
        "run": {**run, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "config": config,
        "data": data,
        "git": git_state(),
        "environment": environment(),
        "train": train,
        "extrapolation": extrapolation,
    }


def write_results(results: dict, output_dir: str | Path) -> Path:
    path = Path(output_dir) / FILENAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)  # never leave a half-written file behind
    return path


def read_results(path: str | Path) -> dict:
    results = json.loads(Path(path).read_text())
    if results.get("schema") != SCHEMA:
        raise ValueError(f"{path}: schema {results.get('schema')!r} is not {SCHEMA!r}")
    return results


def find_results(root: str | Path) -> list[Path]:
    return sorted(Path(root).rglob(FILENAME))
