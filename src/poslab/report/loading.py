"""Reading a folder of runs: every results.json under it (checked for the shape the report
relies on), the unreadable ones, and the job folders that have none."""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from poslab.records.results import FILENAME, STATUSES, find_results, flatten, read_results
from poslab.report.text import is_finite, one_line

log = logging.getLogger("poslab.report")


@dataclass(frozen=True)
class Protocol:
    """How the held-out tokens were cut into windows: `nonoverlapping`, or `sliding` with its
    stride (the tokens scored per window)."""

    name: str
    stride: int | None = None

    @property
    def title(self) -> str:
        return f"{self.name} (stride {self.stride})" if self.stride else self.name

    @property
    def slug(self) -> str:
        """The title as a file name."""
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name) + (f"_s{self.stride}" if self.stride else "")


def protocol_order(protocol: Protocol) -> tuple:
    return (protocol.name != "nonoverlapping", protocol.name, protocol.stride or 0)


@dataclass
class Run:
    """One job's results.json, as read."""

    results: dict
    path: Path  # the results.json

    @property
    def folder(self) -> Path:
        # not run.output_dir: a sweep folder may have been moved or copied since, and the
        # traceback file is written beside results.json
        return self.path.parent

    @property
    def info(self) -> dict:
        return self.results["run"]

    @property
    def status(self) -> str:
        return self.results["status"]

    @property
    def job(self) -> str:
        """train, eval or inspect ("task" in files before poslab.results/3)."""
        return self.info.get("job") or self.info.get("task") or "train"

    @property
    def encoding(self) -> str:
        # a job that failed before its config resolved may not know its encoding's name
        return self.info.get("pos_enc") or "unknown encoding"

    @property
    def seed(self):
        return self.info.get("seed")

    @property
    def train(self) -> dict:
        return self.results.get("train") or {}

    @cached_property
    def flat_config(self) -> dict:
        return flatten(self.results.get("config"))

    @property
    def train_context(self) -> int | None:
        return self.train.get("train_context") or self.flat_config.get("data.context")

    @property
    def is_fast_dev_run(self) -> bool:
        return bool(self.flat_config.get("trainer.fast_dev_run"))

    @property
    def checkpoint_run(self) -> str:
        """The run folder of the checkpoint an eval run scored."""
        if self.info.get("checkpoint_run"):
            return self.info["checkpoint_run"]
        ckpt_path = self.info.get("ckpt_path")
        return Path(ckpt_path).parent.parent.name if ckpt_path else "unknown checkpoint"

    def protocol_of(self, row: dict) -> Protocol:
        # a row written before rows named their protocol was scored under the config's one
        name = row.get("protocol") or self.flat_config.get("eval.protocol") or "nonoverlapping"
        # a stride tells protocols apart only where windows overlap
        return Protocol(name, None if name == "nonoverlapping" else row.get("stride"))

    @cached_property
    def rows_by_protocol(self) -> dict[Protocol, dict[int, dict]]:
        rows: dict[Protocol, dict[int, dict]] = defaultdict(dict)
        for row in self.results["extrapolation"]:
            rows[self.protocol_of(row)][row["eval_length"]] = row
        return dict(rows)

    def rows_at(self, protocol: Protocol) -> dict[int, dict]:
        """{eval length: row} under one protocol."""
        return self.rows_by_protocol.get(protocol, {})

    def ppl_at(self, protocol: Protocol, length: int | None) -> float | None:
        """The perplexity at this eval length under this protocol if it is a finite number, else None."""
        row = self.rows_at(protocol).get(length)
        if row is None or row["status"] != "ok" or not is_finite(row.get("ppl")):
            return None
        return row["ppl"]

    @property
    def passkey(self) -> dict | None:
        return self.results.get("passkey") or None

    @property
    def passkey_mix(self) -> float:
        """The fraction of training windows that carried a passkey; 0 when there were none. The
        passkey record's own figure first: an eval run's config may not be its checkpoint's."""
        mix = (self.passkey or {}).get("trained_with_mix")
        if mix is None:
            mix = self.flat_config.get("data.passkey_mix")
        return mix or 0


@dataclass
class Unreadable:
    path: Path
    reason: str


@dataclass
class Collection:
    """What a folder holds: the readable results, the unreadable ones, and the job folders
    that have no results.json at all (killed, or still running)."""

    runs: list[Run]
    unreadable: list[Unreadable]
    without_results: list[Path]


def collect(root: str | Path) -> Collection:
    root = Path(root)
    runs, unreadable = [], []
    for path in find_results(root):
        try:
            results = read_results(path)
            check_shape(results)
        except (ValueError, OSError) as error:
            reason = one_line(error).removeprefix(f"{path}: ")
            if isinstance(error, json.JSONDecodeError):  # typically a file cut short
                reason = f"not valid JSON: {reason}"
            log.warning("skipping %s: %s", path, reason)
            unreadable.append(Unreadable(path, reason))
            continue
        runs.extend(Run(part, path) for part in split_by_variant(results))
    # every Hydra job folder has a .hydra/ from its first second on
    job_folders = {hydra.parent for hydra in root.rglob(".hydra") if hydra.is_dir()}
    without_results = sorted(folder for folder in job_folders if not (folder / FILENAME).exists())
    return Collection(runs, unreadable, without_results)


def split_by_variant(results: dict) -> list[dict]:
    """An eval that scored one checkpoint under several variants (eval.variants) is one
    results.json; the report shows each variant as its own run, on its own line."""
    task = results.get("task")
    scored = task["rows"] if task else results["extrapolation"]
    variants = list(dict.fromkeys(row.get("variant") for row in scored))
    if (results["run"].get("job") or results["run"].get("task")) != "eval" or len(variants) < 2:
        return [results]
    return [
        {
            **results,
            "run": {**results["run"], "variant": variant, "pos_enc": variant},
            "extrapolation": [row for row in results["extrapolation"] if row.get("variant") == variant],
            "task": {**task, "rows": [row for row in task["rows"] if row.get("variant") == variant]} if task else None,
        }
        for variant in variants
    ]


def check_shape(results: dict) -> None:
    """What the report relies on, so that a results.json of the right schema but a wrong shape is
    listed as unreadable instead of breaking the report."""
    if not isinstance(results.get("run"), dict):
        raise ValueError("no run section")
    if results["status"] not in STATUSES:
        raise ValueError(f"status {results['status']!r} is not one of {', '.join(STATUSES)}")
    for section in ("config", "data", "train", "git", "environment"):
        if not isinstance(results.get(section) or {}, dict):
            raise ValueError(f"{section} is not an object")
    rows = results.get("extrapolation")
    if not isinstance(rows, list) or not all(
        isinstance(row, dict) and isinstance(row.get("eval_length"), int) and "status" in row for row in rows
    ):
        raise ValueError("extrapolation is not a list of rows with eval_length and status")
    for row in rows:
        if row["status"] == "ok" and not is_finite(row.get("ppl")):
            raise ValueError(f"the row at {row['eval_length']} is ok but its ppl is {row.get('ppl')!r}, not a number")
        if row.get("per_position") is not None and not _is_per_position(row["per_position"]):
            raise ValueError(f"per_position at {row['eval_length']} is not bins with a mean loss each")
    if results.get("passkey") is not None and not _is_passkey_grid(results["passkey"]):
        raise ValueError("passkey is not an accuracy per length and depth")


def _is_per_position(bins) -> bool:
    keys = ("bin_start", "bin_end", "mean_loss")
    if not isinstance(bins, dict) or not all(isinstance(bins.get(key), list) for key in keys):
        return False
    return len({len(bins[key]) for key in keys}) == 1


def _is_passkey_grid(passkey) -> bool:
    if not isinstance(passkey, dict):
        return False
    lengths, depths = passkey.get("lengths"), passkey.get("depths")
    if not isinstance(lengths, list) or not isinstance(depths, list):
        return False
    grids = [passkey.get("accuracy")] + ([passkey["status"]] if passkey.get("status") is not None else [])
    return all(
        isinstance(grid, list)
        and len(grid) == len(lengths)
        and all(isinstance(line, list) and len(line) == len(depths) for line in grid)
        for grid in grids
    )
