"""poslab-report DIR: every results.json under DIR -> DIR/report.md and plots (--html: report.html).

With --html, DIR/report.html is the same report as one self-contained page, plots inline.

One table per evaluation protocol (nonoverlapping windows; a sliding window with its stride), one
row per experiment. Runs whose configs differ only in the seed (or in keys that only label a run)
are seeds of one experiment: a cell is the mean perplexity over the seeds at one eval length, the
half-width of a 95% Student-t interval over them, and in brackets the ratio to the same run's
perplexity at its training context under the same protocol (per run, then averaged). Runs that
differ in anything else are separate rows, labelled by what differs. A failed or diverged job is
a row that says so, never numbers. Nothing is dropped silently: failed and diverged jobs, job
folders without a results.json and unreadable results.json files are listed as problems, and
fast_dev_run jobs as left out.

Beside report.md: extrapolation.png (perplexity against eval length, a panel per protocol, bands
over seeds); per_position_<protocol>.png (loss by position in the window, a panel per row) and
passkey.png (passkey retrieval accuracy by length and depth, a panel per row) when the runs
recorded them.

Also a Hydra callback that writes the report when a multirun ends.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from hydra.experimental.callback import Callback

from poslab.intervals import t_interval
from poslab.results import FILENAME, STATUSES, comparable_config, find_results, flatten, read_results

log = logging.getLogger(__name__)

REPORT_FILENAME = "report.md"
PLOT_FILENAME = "extrapolation.png"
PER_POSITION_PLOT_PREFIX = "per_position_"  # + the protocol's slug + .png
PASSKEY_PLOT_FILENAME = "passkey.png"

# The confidence of the intervals over seeds
CONFIDENCE = 0.95
# An encoding "holds up" at a length while its perplexity stays within this fraction of the
# perplexity at its training context
TOLERANCE = 0.10

# The problems of the last sweep this process reported, for the console script's exit status.
# Updated in place, so a module that imported the name sees the new list.
LAST_SWEEP_PROBLEMS: list[str] = []

ROW_STATUS_TEXT = {"unsupported": "unsupported", "non_finite": "non-finite", "out_of_memory": "out of memory"}
# a passkey cell is small: its reason is a word
PASSKEY_STATUS_TEXT = {"unsupported": "n/a", "out_of_memory": "OOM"}


# --- reading --------------------------------------------------------------------------------


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
    def task(self) -> str:
        return self.info.get("task") or "train"

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
        if row is None or row["status"] != "ok" or not _is_finite(row.get("ppl")):
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
            reason = _one_line(error).removeprefix(f"{path}: ")
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
    variants = list(dict.fromkeys(row.get("variant") for row in results["extrapolation"]))
    if results["run"].get("task") != "eval" or len(variants) < 2:
        return [results]
    return [
        {
            **results,
            "run": {**results["run"], "variant": variant, "pos_enc": variant},
            "extrapolation": [row for row in results["extrapolation"] if row.get("variant") == variant],
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


# --- grouping and labelling -------------------------------------------------------------------


@dataclass
class Experiment:
    """Runs that are seeds of one experiment: same task, same encoding scored (and trained), same
    config apart from the seed and the keys that only label a run."""

    runs: list[Run]
    label: str = ""
    label_keys: list[str] = field(default_factory=list)

    @property
    def first(self) -> Run:
        return self.runs[0]

    @property
    def measured(self) -> list[Run]:
        return [run for run in self.runs if run.status == "ok"]

    @cached_property
    def config(self) -> dict | None:
        """The comparable config, or None for a job that recorded none."""
        config = self.first.results.get("config")
        return None if config is None else comparable_config(config, ignore_seed=True)

    @property
    def name(self) -> str:
        """The label before any config key: the encoding, or for eval runs, the variant and the
        checkpoint it scored."""
        first = self.first
        if first.task != "eval":
            return first.encoding
        variant = first.info.get("variant") or first.encoding
        trained_as = first.info.get("trained_as") or "unknown"
        checkpoints = sorted({run.checkpoint_run for run in self.measured or self.runs})
        if len(checkpoints) == 1:
            return f"{variant} on {trained_as} checkpoint ({checkpoints[0]})"
        return f"{variant} on {trained_as} checkpoints"


def experiment_key(run: Run) -> tuple:
    config = comparable_config(run.results.get("config"), ignore_seed=True)
    return (
        run.task,
        run.encoding,
        run.info.get("variant"),
        run.info.get("trained_as"),
        json.dumps(config, sort_keys=True, default=str),
    )


def group_experiments(runs: list[Run]) -> list[Experiment]:
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[experiment_key(run)].append(run)
    return [Experiment(sorted(group, key=lambda run: _natural_key(str(run.seed)))) for group in groups.values()]


_ABSENT = object()  # a key missing from one config: a value of its own, unlike any config value


def _is_encoding_key(key: str) -> bool:
    return key in ("pos_enc", "pos_enc_name") or key.startswith("pos_enc.")


def _is_unresolved(value) -> bool:
    return isinstance(value, str) and "${" in value


def varying_keys(configs: list[dict]) -> list[str]:
    """Keys whose values are not the same in every config; a key absent from some config varies.
    An unresolved interpolation (a job that failed before its config resolved) says nothing of
    the value, so it neither varies nor matches."""
    values: dict[str, set[str]] = defaultdict(set)
    for key in {key for config in configs for key in config}:
        for config in configs:
            value = config.get(key, _ABSENT)
            if not _is_unresolved(value):
                values[key].add(value if value is _ABSENT else json.dumps(value, sort_keys=True, default=str))
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def label_experiments(experiments: list[Experiment]) -> None:
    """Label each experiment by its name, followed by the config keys that vary between
    experiments. The encoding's own keys (pos_enc.*) are left out when the names already tell the
    rows apart, and kept when experiments of one name differ only inside them."""
    known = [e for e in experiments if e.config is not None]
    shared_keys = [key for key in varying_keys([e.config for e in known]) if not _is_encoding_key(key)]
    same_name_and_keys: dict[tuple, list[Experiment]] = defaultdict(list)
    for experiment in known:
        values = tuple(_value_text(experiment.config.get(key, _ABSENT)) for key in shared_keys)
        same_name_and_keys[experiment.name, values].append(experiment)
    for same in same_name_and_keys.values():
        encoding_keys = [
            key for key in varying_keys([e.config for e in same]) if _is_encoding_key(key) and key != "pos_enc_name"
        ]
        for experiment in same:
            experiment.label_keys = shared_keys + encoding_keys
    for experiment in experiments:
        settings = [
            f"{key}={_value_text(experiment.config.get(key, _ABSENT))}"
            for key in experiment.label_keys
            if not _is_unresolved(experiment.config.get(key))
        ]
        experiment.label = experiment.name + (f" ({', '.join(settings)})" if settings else "")
    # measured rows must never read alike (a failed job's row may share its label: it says what
    # happened); only a config without the keys that differ could make two of them alike
    by_label: dict[str, list[Experiment]] = defaultdict(list)
    for experiment in experiments:
        if experiment.measured:
            by_label[experiment.label].append(experiment)
    for alike in by_label.values():
        if len(alike) > 1:
            for experiment in alike:
                experiment.label += f" [{experiment.first.folder.name}]"


# --- rows and cells -----------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the tables: the measured seeds of an experiment, or one failed or diverged job."""

    experiment: Experiment
    runs: list[Run]

    @property
    def label(self) -> str:
        return self.experiment.label

    @property
    def measured(self) -> bool:
        return self.runs[0].status == "ok"

    @property
    def train_context(self) -> int | None:
        # the runs of a row share their config, so their training context
        return self.runs[0].train_context


def build_rows(runs: list[Run]) -> list[Row]:
    experiments = group_experiments(runs)
    label_experiments(experiments)
    experiments.sort(key=lambda e: (e.first.task != "train", _natural_key(e.label)))
    rows = []
    for experiment in experiments:
        if experiment.measured:
            rows.append(Row(experiment, experiment.measured))
        rows += [Row(experiment, [run]) for run in experiment.runs if run.status != "ok"]
    return rows


def protocols_of(rows: list[Row]) -> list[Protocol]:
    """The protocols the measured rows were scored under, nonoverlapping first."""
    found = {protocol for row in rows if row.measured for run in row.runs for protocol in run.rows_by_protocol}
    return sorted(found, key=protocol_order)


def eval_lengths(rows: list[Row], protocol: Protocol) -> list[int]:
    return sorted({length for row in rows if row.measured for run in row.runs for length in run.rows_at(protocol)})


@dataclass
class Cell:
    """One eval length of one row under one protocol, over its seeds."""

    ppl: float | None  # mean over the seeds with a finite perplexity at this length
    half_width: float | None  # of the 95% Student-t interval around that mean; None under two seeds
    ratio: float | None  # mean over those seeds of ppl / the same run's ppl at its training context
    without_value: list[tuple[object, str]]  # (seed, why) for the seeds with no finite perplexity


def cell_at(runs: list[Run], protocol: Protocol, length: int) -> Cell | None:
    """None when no run scored this length under this protocol."""
    if not any(length in run.rows_at(protocol) for run in runs):
        return None
    ppls, ratios, without_value = [], [], []
    for run in runs:
        ppl = run.ppl_at(protocol, length)
        if ppl is None:
            row = run.rows_at(protocol).get(length)
            status = "not scored" if row is None else row["status"]
            # a row marked ok whose perplexity is missing or not a number is non-finite all the same
            status = "non_finite" if status == "ok" else status
            without_value.append((run.seed, ROW_STATUS_TEXT.get(status, status.replace("_", " "))))
            continue
        ppls.append(ppl)
        in_context = run.ppl_at(protocol, run.train_context)
        if in_context:
            ratios.append(ppl / in_context)
    mean, half_width = t_interval(ppls, CONFIDENCE) if ppls else (None, None)
    return Cell(
        ppl=mean,
        half_width=half_width,
        ratio=statistics.fmean(ratios) if ratios else None,
        without_value=without_value,
    )


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.ppl is None:
        return " / ".join(sorted({why for _, why in cell.without_value}))
    text = f"{cell.ppl:.2f}" if math.isfinite(cell.ppl) else "non-finite"
    if cell.half_width is not None and math.isfinite(cell.half_width):
        text += f" ± {cell.half_width:.2f}"
    if cell.ratio is not None and math.isfinite(cell.ratio):
        text += f" ({cell.ratio:.2f}x)"
    if cell.without_value:
        text += "; " + ", ".join(f"seed {seed}: {why}" for seed, why in cell.without_value)
    return text


def job_outcome(run: Run) -> str:
    """What happened to a job that has no numbers: "failed", or "diverged at step N"."""
    if run.status == "diverged":
        step = run.train.get("diverged_at_step")
        return "diverged" if step is None else f"diverged at step {step}"
    return run.status


def markdown_table(rows: list[Row], protocol: Protocol | None) -> str:
    """One protocol's table; failed and diverged jobs are in every table. With no protocol (no
    length scored anywhere, only failed jobs), one column says what happened."""
    lengths = eval_lengths(rows, protocol) if protocol else []
    columns = [str(length) for length in lengths] or ["result"]
    lines = [
        "| encoding | parameters | seeds | " + " | ".join(columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        if row.measured:
            seeds = str(len(row.runs))
            cells = [cell_text(cell_at(row.runs, protocol, length)) for length in lengths] or [""]
        else:
            seeds = f"seed {row.runs[0].seed}"
            cells = [job_outcome(row.runs[0])] + [""] * (len(columns) - 1)
        parameters = " / ".join(sorted({_count(run.train.get("parameters")) for run in row.runs}))
        lines.append("| " + " | ".join(_escape([row.label, parameters, seeds, *cells])) + " |")
    return "\n".join(lines)


def seed_count_note(rows: list[Row]) -> str | None:
    """Say where the tables show no interval because a row has one seed."""
    measured = [row for row in rows if row.measured]
    single = [row.label for row in measured if len(row.runs) == 1]
    if not single:
        return None
    if len(single) == len(measured):
        return f"One seed per row: no interval is shown (a {CONFIDENCE:.0%} interval needs at least 2 seeds)."
    needs = f"a {CONFIDENCE:.0%} interval needs at least 2 seeds"
    return f"Rows with one seed show no interval ({needs}): {', '.join(single)}."


# --- the summary line per row ------------------------------------------------------------------


def summary_line(row: Row, protocols: list[Protocol]) -> str:
    """How far the row holds up under each protocol, its passkey figures, and whether it was
    trained with the passkey mix."""
    holds, without_in_length = [], []
    for protocol in protocols:
        longest = longest_within_tolerance(row, protocol)
        if longest is None:
            if eval_lengths([row], protocol):
                without_in_length.append(protocol.title)
            continue
        length, is_longest_scored = longest
        extent = f"{length / row.train_context:g}x" + (", the longest scored" if is_longest_scored else "")
        holds.append(f"{length} tokens ({extent}) under {protocol.title}")
    sentences = []
    if holds:
        sentences.append(f"Within {TOLERANCE:.0%} of the in-length perplexity up to " + ", ".join(holds) + ".")
    if without_in_length:
        sentences.append(f"No perplexity at the training context under {', '.join(without_in_length)}.")
    if passkey := passkey_summary(row):
        sentences.append(passkey)
    mixes = sorted({run.passkey_mix for run in row.runs if run.passkey_mix})
    if mixes:
        sentences.append(f"Trained with the passkey mix (data.passkey_mix={', '.join(map(str, mixes))}).")
    return f"- {row.label}: " + " ".join(sentences or ["no perplexity."])


def longest_within_tolerance(row: Row, protocol: Protocol) -> tuple[int, bool] | None:
    """The longest eval length up to which every scored length from the training context on has a
    perplexity within TOLERANCE of the in-length one (the exact ratio, as wandb's
    extrap/max_len_within_10pct; a table cell showing 1.10x may be just above), and whether it is
    the longest length scored. None without a perplexity at the training context. Contiguous on
    purpose: a model that fails the test at 2x and passes it at 4x does not hold up to 4x."""
    context = row.train_context
    lengths = [length for length in eval_lengths([row], protocol) if context and length >= context]
    if not lengths or lengths[0] != context:
        return None
    longest = None
    for length in lengths:
        cell = cell_at(row.runs, protocol, length)
        if cell is None or cell.ratio is None or cell.ratio > 1 + TOLERANCE:
            break
        longest = length
    return None if longest is None else (longest, longest == lengths[-1] and len(lengths) > 1)


def passkey_summary(row: Row) -> str | None:
    recorded = [run.passkey for run in row.runs if run.passkey]
    if not recorded:
        return None
    windows = sorted({p.get("effective_window") for p in recorded}, key=lambda w: (w is None, w or 0))
    thresholds = sorted({p["threshold"] for p in recorded if _is_finite(p.get("threshold"))})
    threshold = f" (threshold {', '.join(f'{t:.0%}' for t in thresholds)})" if thresholds else ""
    if windows == [None]:
        text = f"Passkey: no effective window{threshold}"
    else:
        known = [str(w) for w in windows if w is not None]
        spread = known[0] if len(known) == 1 else f"{known[0]} to {known[-1]}"
        text = f"Passkey: effective window {spread} tokens{threshold}"
        if None in windows:
            text += ", none for some seeds"
    accuracies = [p["in_length_accuracy"] for p in recorded if _is_finite(p.get("in_length_accuracy"))]
    if accuracies:
        mean, half_width = t_interval(accuracies, CONFIDENCE)
        interval = f" ± {100 * half_width:.0f}" if half_width is not None else ""
        text += f", in-length accuracy {100 * mean:.0f}{interval}%"
    return text + "."


def passkey_mix_line(rows: list[Row]) -> str | None:
    """Which rows were trained with the passkey mix: said whenever a run was, or was tested on
    passkeys."""
    measured = [row for row in rows if row.measured]
    if not any(run.passkey or run.passkey_mix for row in measured for run in row.runs):
        return None
    mixed = [row for row in measured if any(run.passkey_mix for run in row.runs)]
    if not mixed:
        return "- trained with the passkey mix: none"

    def named(row: Row) -> str:
        if "data.passkey_mix" in row.experiment.label_keys:  # the label says it already
            return row.label
        return f"{row.label} (data.passkey_mix={', '.join(map(str, sorted({run.passkey_mix for run in row.runs})))})"

    names = ", ".join(named(row) for row in mixed)
    without = [row.label for row in measured if not any(run.passkey_mix for run in row.runs)]
    return f"- trained with the passkey mix: {names}" + (f"; without: {', '.join(without)}" if without else "")


# --- plots -------------------------------------------------------------------------------------

MARKERS = "osD^vP*Xh<>p"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, and no GUI backend on a cluster node
    import matplotlib.pyplot as plt

    return plt


def _panel_grid(plt, count: int, width: float, height: float, columns: int = 3, **subplots):
    """A figure of `count` panels, at most `columns` a line; the axes in reading order."""
    columns = min(columns, count)
    lines = math.ceil(count / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(width * columns, height * lines), squeeze=False, **subplots)
    axes = list(axes.flat)
    for unused in axes[count:]:
        unused.set_visible(False)
    return fig, axes[:count]


def _color(plt, index: int, count: int):
    # ten distinct colours by default; twenty once more rows than that share a plot
    return f"C{index % 10}" if count <= 10 else plt.get_cmap("tab20")(index % 20)


def draw_or_say_why_not(draw: Callable[[Path], None], path: Path, no_data: str | None = None) -> str | None:
    """Draw a plot to `path`, unless `no_data` says why there is none; return why there is none.
    A plot that cannot be drawn must not cost the report. Without a plot, the file of an earlier
    report is removed, so that it is never read as this one's."""
    why_not = no_data
    if why_not is None:
        try:
            draw(path)
        except Exception as error:
            log.error("plot %s failed: %s", path, error)
            why_not = f"the plot could not be drawn ({type(error).__name__}: {_one_line(error)})"
    if why_not and path.exists():
        path.unlink()
        why_not += f"; the {path.name} of an earlier report was removed"
    return why_not


# perplexity against eval length


@dataclass
class Curve:
    label: str
    points: list[tuple[int, float]]  # (eval length, mean perplexity), finite values only
    bands: list[tuple[int, float, float]]  # (eval length, low, high) of the 95% interval, where there is one
    first_without_value: int | None  # the first length with no value, for the legend
    train_contexts: set[int]


def curves(rows: list[Row], protocol: Protocol) -> list[Curve]:
    lengths = eval_lengths(rows, protocol)
    result = []
    for row in rows:
        if not row.measured:
            continue
        cells = {length: cell_at(row.runs, protocol, length) for length in lengths}
        finite = {n: cell for n, cell in cells.items() if cell and cell.ppl is not None and math.isfinite(cell.ppl)}
        points = [(n, cell.ppl) for n, cell in finite.items()]
        # a perplexity is at least 1: an interval reaching below says only that the seeds are few
        bands = [
            (n, max(1.0, cell.ppl - cell.half_width), cell.ppl + cell.half_width)
            for n, cell in finite.items()
            if cell.half_width is not None and math.isfinite(cell.half_width)
        ]
        missing = [n for n, cell in cells.items() if cell and n not in finite]
        contexts = {run.train_context for run in row.runs if run.train_context}
        result.append(Curve(row.label, points, bands, missing[0] if missing else None, contexts))
    return result


def plot_extrapolation(panels: list[tuple[Protocol, list[Curve]]], path: Path) -> None:
    """A panel per protocol; a row keeps its colour and marker in every panel."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    labels = list(dict.fromkeys(line.label for _, lines in panels for line in lines if line.points))
    style = {label: (_color(plt, i, len(labels)), MARKERS[i % len(MARKERS)]) for i, label in enumerate(labels)}
    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False)
    for ax, (protocol, lines) in zip(axes[0], panels, strict=True):
        drawn = [line for line in lines if line.points]
        for line in drawn:
            color, marker = style[line.label]
            label = line.label + (f" (no value from {line.first_without_value})" if line.first_without_value else "")
            # distinct markers and slight transparency keep coinciding runs (rope_pi = rope in context) visible
            ax.plot(*zip(*line.points, strict=True), color=color, marker=marker, markersize=7, alpha=0.85, label=label)
            if line.bands:
                lengths, low, high = zip(*line.bands, strict=True)
                ax.fill_between(lengths, low, high, color=color, alpha=0.15, linewidth=0)
        for context in sorted(set().union(*(line.train_contexts for line in drawn))):
            ax.axvline(context, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({length for line in drawn for length, _ in line.points}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("eval length (tokens)")
        ax.set_ylabel("perplexity per byte (held-out)")
        ax.set_title(f"protocol {protocol.title}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Length extrapolation: mean over seeds, band: {CONFIDENCE:.0%} interval; dotted: training context")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# loss by position in the window


@dataclass
class PositionPanel:
    label: str
    train_context: int | None
    # eval length -> (bin end, mean loss over seeds): a bin [start, end) of 0-based positions is
    # drawn at its last position counted from 1, which is also the number of tokens its last
    # target sees, so the training context falls where training stopped
    lines: dict[int, list[tuple[int, float]]]


def position_panels(rows: list[Row], protocol: Protocol) -> list[PositionPanel]:
    """A panel per measured row that recorded the loss by position under this protocol."""
    panels = []
    for row in rows:
        if not row.measured:
            continue
        lines = {}
        for length in eval_lengths([row], protocol):
            losses: dict[int, list[float]] = defaultdict(list)
            for run in row.runs:
                scored = run.rows_at(protocol).get(length)
                if not scored or scored["status"] != "ok" or not scored.get("per_position"):
                    continue
                bins = scored["per_position"]
                for end, loss in zip(bins["bin_end"], bins["mean_loss"], strict=True):
                    if _is_finite(loss):
                        losses[end].append(loss)
            if losses:
                lines[length] = [(end, statistics.fmean(values)) for end, values in sorted(losses.items())]
        if lines:
            panels.append(PositionPanel(row.label, row.train_context, lines))
    return panels


def plot_per_position(protocol: Protocol, panels: list[PositionPanel], path: Path) -> None:
    """A panel per row, a line per eval length; shared axes, so that rows compare at a glance."""
    plt = _pyplot()
    from matplotlib.ticker import ScalarFormatter

    lengths = sorted({length for panel in panels for length in panel.lines})
    colormap = plt.get_cmap("viridis")
    color = {length: colormap(i / max(1, len(lengths) - 1)) for i, length in enumerate(lengths)}
    fig, axes = _panel_grid(plt, len(panels), width=5.0, height=3.6, sharex=True, sharey=True)
    for ax, panel in zip(axes, panels, strict=True):
        for length, points in sorted(panel.lines.items()):
            ax.plot(*zip(*points, strict=True), marker=".", color=color[length], label=f"eval length {length}")
        if panel.train_context:
            ax.axvline(panel.train_context, color="grey", linestyle="--", linewidth=1, label="training context")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 64, not 2^6
        ax.set_title(panel.label, fontsize=9)
        ax.set_xlabel("position in the window (tokens)")
        ax.set_ylabel("mean loss (nats per token)")
        ax.grid(True, alpha=0.3)
    # one legend for all panels: a panel may lack the lengths its encoding cannot serve
    legend: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    axes[0].legend(legend.values(), legend.keys(), fontsize=7)
    fig.suptitle(
        f"Loss by position in the window, protocol {protocol.title}: mean over seeds, "
        "log bins drawn at their last position; dashed: training context"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# passkey retrieval


@dataclass
class PasskeyGrid:
    label: str
    lengths: list[int]
    depths: list[float]
    accuracy: list[list[float | None]]  # [depth][length]: mean over the seeds that scored the cell
    why_not: list[list[str]]  # [depth][length]: "" where there is an accuracy, else why not, in a word
    effective_windows: list[int | None]  # one per seed
    trials: list[int]  # one per seed


def passkey_grid(row: Row) -> PasskeyGrid | None:
    recorded = [run.passkey for run in row.runs if run.passkey]
    if not recorded:
        return None
    scores: dict[tuple, list[float]] = defaultdict(list)
    statuses: dict[tuple, list[str]] = defaultdict(list)
    for passkey in recorded:
        for i, length in enumerate(passkey["lengths"]):
            for j, depth in enumerate(passkey["depths"]):
                status = passkey["status"][i][j] if passkey.get("status") else "ok"
                accuracy = passkey["accuracy"][i][j]
                if status == "ok" and _is_finite(accuracy):
                    scores[length, depth].append(accuracy)
                else:
                    statuses[length, depth].append(status)
    cells = scores.keys() | statuses.keys()
    lengths = sorted({length for length, _ in cells})
    depths = sorted({depth for _, depth in cells})
    accuracy = [[statistics.fmean(scores[n, d]) if scores.get((n, d)) else None for n in lengths] for d in depths]

    def why_no_accuracy(cell: tuple) -> str:
        if scores.get(cell):
            return ""
        status = (statuses.get(cell) or ["not scored"])[0]
        return PASSKEY_STATUS_TEXT.get(status, "-")

    return PasskeyGrid(
        label=row.label,
        lengths=lengths,
        depths=depths,
        accuracy=accuracy,
        why_not=[[why_no_accuracy((n, d)) for n in lengths] for d in depths],
        effective_windows=[passkey.get("effective_window") for passkey in recorded],
        trials=sorted({passkey["trials"] for passkey in recorded if isinstance(passkey.get("trials"), int)}),
    )


def plot_passkey(grids: list[PasskeyGrid], path: Path) -> None:
    """A heatmap per row: eval length across, passkey depth down, accuracy in percent in each cell."""
    import numpy as np

    plt = _pyplot()
    colormap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # grey: cells without an accuracy
    fig, axes = _panel_grid(plt, len(grids), width=5.4, height=4.0)
    for ax, grid in zip(axes, grids, strict=True):
        percent = np.array([[np.nan if a is None else 100 * a for a in line] for line in grid.accuracy])
        image = ax.imshow(np.ma.masked_invalid(percent), cmap=colormap, vmin=0, vmax=100, aspect="auto")
        for i, line in enumerate(grid.accuracy):
            for j, accuracy in enumerate(line):
                text = grid.why_not[i][j] if accuracy is None else f"{100 * accuracy:.0f}"
                # white on the dark low end of the colour map, black on the light high end
                color = "white" if accuracy is not None and accuracy < 0.6 else "black"
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)
        ax.set_xticks(range(len(grid.lengths)), [str(length) for length in grid.lengths])
        ax.set_yticks(range(len(grid.depths)), [f"{depth:g}" for depth in grid.depths])
        ax.set_xlabel("context length (tokens)")
        fraction = all(0 <= depth <= 1 for depth in grid.depths)
        ax.set_ylabel(f"passkey depth ({'fraction' if fraction else 'percent'} of the context)")
        windows = sorted({str(window) for window in grid.effective_windows})
        ax.set_title(f"{grid.label}\neffective window: {', '.join(windows)}", fontsize=9)
        fig.colorbar(image, ax=ax, label="accuracy (%)")
    trials = {trial for grid in grids for trial in grid.trials}
    per_cell = f", {trials.pop()} trials per cell" if len(trials) == 1 else ""
    fig.suptitle(f"Passkey retrieval accuracy (%), mean over seeds{per_cell}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- commands --------------------------------------------------------------------------------


def command_lines(rows: list[Row], root: Path) -> list[str]:
    """The command lines that made these runs, as Hydra recorded them: each sweep's own (its
    multirun.yaml) and each row's (its jobs' .hydra/overrides.yaml, the seeds merged into one
    sweep). Where nothing was recorded (results.json files copied on their own), what varies
    between the runs, as overrides."""
    lines = []
    for sweep_file in sorted(root.rglob("multirun.yaml")):
        if command := sweep_command(sweep_file):
            lines.append(f"- sweep {_relative(sweep_file.parent, root)}: `{command}`")
    for row in rows:
        if row.measured and (commands := row_commands(row)):
            lines.append(f"- {row.label}: " + ", ".join(f"`{command}`" for command in commands))
    if lines:
        return lines
    varying = varying_overrides(rows)
    return [
        "- not recorded beside the results (no multirun.yaml or .hydra/overrides.yaml); "
        + (f"what varies between the runs: `{varying}`" if varying else "the runs share one config")
    ]


def _program(task: str | None) -> str:
    return "poslab-eval" if task == "eval" else "poslab-train"


def sweep_command(multirun_yaml: Path) -> str | None:
    from omegaconf import OmegaConf

    try:
        hydra = OmegaConf.load(multirun_yaml).hydra
        overrides = [str(override) for override in hydra.overrides.task]
        program = _program(hydra.job.get("config_name"))
    except Exception as error:  # a damaged file costs its line, not the report
        log.warning("no command from %s: %s", multirun_yaml, _one_line(error))
        return None
    return " ".join([program, "-m", *overrides])


def job_overrides(folder: Path) -> list[str] | None:
    """The overrides of one job, as Hydra recorded them in its folder."""
    from omegaconf import OmegaConf

    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        return [str(override) for override in OmegaConf.load(path)]
    except Exception as error:
        log.warning("no overrides from %s: %s", path, _one_line(error))
        return None


def row_commands(row: Row) -> list[str]:
    """One command for the row: its jobs' overrides, with the values that differ between them (the
    seed) as a sweep; or, where the jobs set different keys, each job's command."""
    recorded = [job_overrides(run.folder) for run in row.runs]
    if not recorded or any(overrides is None for overrides in recorded):
        return []
    program = _program(row.experiment.first.task)
    # key -> its values in order; None for an override without a value (~key)
    values: dict[str, list[str | None]] = {}
    for override in recorded[0]:
        values.setdefault(override.partition("=")[0], [])
    if any({override.partition("=")[0] for override in overrides} != values.keys() for overrides in recorded):
        return [" ".join([program, *overrides]) for overrides in recorded]
    for overrides in recorded:
        for override in overrides:
            key, equals, value = override.partition("=")
            if (value if equals else None) not in values[key]:
                values[key].append(value if equals else None)
    multirun = ["-m"] if any(len(seen) > 1 for seen in values.values()) else []
    merged = [key if seen == [None] else f"{key}={','.join(map(str, seen))}" for key, seen in values.items()]
    return [" ".join([program, *multirun, *merged])]


def varying_overrides(rows: list[Row]) -> str:
    """The encodings, the config keys that label the rows and the seeds, with their values, as
    sweep overrides."""
    experiments = list({id(row.experiment): row.experiment for row in rows}.values())
    parts = []
    encodings = sorted({e.first.encoding for e in experiments}, key=_natural_key)
    if len(encodings) > 1:
        parts.append(f"pos_enc={','.join(encodings)}")
    for key in sorted({key for e in experiments for key in e.label_keys}):
        seen = {
            _value_text(e.config.get(key, _ABSENT))
            for e in experiments
            if e.config is not None and not _is_unresolved(e.config.get(key))
        }
        parts.append(f"{key}={','.join(sorted(seen, key=_natural_key))}")
    seeds = sorted({str(run.seed) for row in rows for run in row.runs}, key=_natural_key)
    if len(seeds) > 1:
        parts.append(f"seed={','.join(seeds)}")
    return " ".join(parts)


# --- set-up -----------------------------------------------------------------------------------


def _model_figure(run: Run) -> str | None:
    config = run.flat_config
    if "model.net.n_layer" not in config:
        return None
    return (
        f"{config['model.net.n_layer']} layers, width {config.get('model.net.n_embd')}, "
        f"{config.get('model.net.n_head')} heads"
    )


def _training_figure(run: Run) -> str | None:
    steps, tokens = run.train.get("steps"), run.train.get("tokens")
    return None if steps is None else f"{steps} steps, {_count(tokens)} tokens"


def _data_figure(run: Run) -> str | None:
    data = run.results.get("data")
    if not data:
        return None
    python = f" (Python {data['python']})" if data.get("python") else ""
    tokenizer = data.get("tokenizer") or {"name": "bytes"}
    tokenizer = tokenizer if isinstance(tokenizer, dict) else {"name": tokenizer}
    level = (
        "byte-level"
        if tokenizer.get("name") == "bytes"
        else f"{tokenizer.get('name')} tokens (vocabulary {tokenizer.get('vocab_size')}; compare runs on bits per byte)"
    )
    corpus = data.get("corpus", "unknown corpus")
    return f"{corpus}{python}, sha256 {str(data.get('sha256') or 'n/a')[:12]}, {level}"


def _eval_figure(run: Run) -> str | None:
    rows = [row for row in run.results["extrapolation"] if row["status"] == "ok"]
    if not rows:
        return None
    protocols = sorted({run.protocol_of(row) for row in rows}, key=protocol_order)
    named = f"protocol{'s' if len(protocols) > 1 else ''} {', '.join(protocol.title for protocol in protocols)}"
    scored = sorted({row.get("tokens_scored") or 0 for row in rows})
    tokens = _count(scored[0]) if len(scored) == 1 else f"{_count(scored[0])} to {_count(scored[-1])}"
    return f"{named}, {tokens} held-out tokens scored at every length"


def _code_figure(run: Run) -> str | None:
    git = run.results.get("git")
    if not git:
        return None
    commit = str(git["commit"])[:10] if git.get("commit") else "unknown commit"
    return f"git {commit}" + (" (dirty)" if git.get("dirty") else "")


SETUP_FIGURES: tuple[tuple[str, Callable[[Run], str | None]], ...] = (
    ("model", _model_figure),
    ("parameters", lambda run: _count(run.train.get("parameters"), missing=None)),
    ("training context", lambda run: _count(run.train_context, missing=None)),
    ("training", _training_figure),
    ("data", _data_figure),
    ("eval", _eval_figure),
    ("device", lambda run: (run.results.get("environment") or {}).get("device")),
    ("code", _code_figure),
)


def figure_line(name: str, figure: Callable[[Run], str | None], rows: list[Row]) -> str | None:
    """'- name: value' when every run shares it; else every value with the rows that have it."""
    labels_by_value: dict[str, list[str]] = {}
    for row in rows:
        for run in row.runs:
            value = figure(run)
            if value is not None and row.label not in labels_by_value.setdefault(value, []):
                labels_by_value[value].append(row.label)
    if not labels_by_value:
        return None
    if len(labels_by_value) == 1:
        return f"- {name}: {next(iter(labels_by_value))}"
    return f"- {name} varies: " + "; ".join(
        f"{value} ({', '.join(labels)})" for value, labels in labels_by_value.items()
    )


def describe_setup(rows: list[Row]) -> list[str]:
    measured = [row for row in rows if row.measured]
    # the figures of measured runs; a report of failed jobs only says what they knew
    described = measured or rows
    runs = [run for row in measured for run in row.runs]
    seeds = ", ".join(sorted({str(run.seed) for run in runs}, key=_natural_key)) or "none"
    lines = [f"- runs: {len(runs)} measured, in {len(measured)} rows; seeds: {seeds}"]
    not_measured = len(rows) - len(measured)
    if not_measured:
        lines[0] += f"; {not_measured} failed or diverged (see Problems)"
    lines += [line for name, figure in SETUP_FIGURES if (line := figure_line(name, figure, described))]
    train_times = [run.train["wall_time_s"] for run in runs if run.task == "train" and run.train.get("wall_time_s")]
    if train_times:
        low, high = min(train_times), max(train_times)
        spread = f"{low:.0f} s" if round(low) == round(high) else f"{low:.0f} to {high:.0f} s"
        lines.append(f"- training time per run: {spread}")
    lines += varying_lines(rows)
    if mix := passkey_mix_line(rows):
        lines.append(mix)
    for row in measured:
        if row.experiment.first.task == "eval":
            checkpoints = ", ".join(f"{run.checkpoint_run} (seed {run.seed})" for run in row.runs)
            lines.append(f"- checkpoints of {row.label}: {checkpoints}")
    return lines


def varying_lines(rows: list[Row]) -> list[str]:
    """The encodings, and each config key that varies between rows with its values."""
    experiments = list({id(row.experiment): row.experiment for row in rows}.values())
    names = sorted({e.name for e in experiments}, key=_natural_key)
    lines = [f"- encodings: {', '.join(names)}"] if len(names) > 1 else []
    keys = sorted({key for e in experiments for key in e.label_keys})
    for key in keys:
        values = {
            _value_text(e.config.get(key, _ABSENT))
            for e in experiments
            if e.config is not None and not _is_unresolved(e.config.get(key))
        }
        lines.append(f"- varies between rows: {key} = {', '.join(sorted(values, key=_natural_key))}")
    return lines


# --- problems and other listings ---------------------------------------------------------------


def problem_lines(found: Collection, root: Path) -> list[str]:
    """One line per failed or diverged job, job folder without results.json, unreadable file."""
    lines = []
    for run in found.runs:
        if run.status == "ok":
            continue
        line = f"{_relative(run.folder, root)}: {job_outcome(run)}: {run.results.get('error') or 'no error recorded'}"
        if run.results.get("traceback"):
            line += f" (traceback: {_relative(run.folder / run.results['traceback'], root)})"
        lines.append(line)
    lines += [
        f"{_relative(folder, root)}: no results.json (killed, or still running)" for folder in found.without_results
    ]
    lines += [f"{_relative(item.path, root)}: unreadable: {item.reason}" for item in found.unreadable]
    return lines


def reuse_lines(runs: list[Run], root: Path) -> list[str]:
    reused = []
    resumed: dict[object, list[str]] = defaultdict(list)
    for run in runs:
        if run.info.get("reused_at"):
            at = run.info["reused_at"]
            at = [at] if isinstance(at, str) else at
            reused.append(f"{_relative(run.folder, root)} (at {', '.join(map(str, at))})")
        if run.info.get("resumed_from_step") is not None:
            resumed[run.info["resumed_from_step"]].append(_relative(run.folder, root))
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


# --- the report -------------------------------------------------------------------------------


@dataclass
class Report:
    path: Path | None  # report.md; None when the folder has no results.json
    plot: Path | None  # extrapolation.png; None when there is no plot
    problems: list[str]  # one line each: failed or diverged jobs, folders without results, unreadable files
    rows: list[Row] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)  # every plot written
    html: Path | None = None  # report.html, when asked for


INTRO = (
    "Perplexity per byte on the same held-out tokens at every eval length (columns, in tokens), a "
    "table per evaluation protocol. One row per experiment: runs that differ only in the seed are "
    f"its seeds, and a cell is their mean ± the half-width of a {CONFIDENCE:.0%} Student-t interval over them "
    "(n - 1 degrees of freedom); in brackets, the ratio to the same run's perplexity at its "
    "training context under the same protocol (taken per run, then averaged). Rows are labelled "
    "by the settings that differ."
)

SUMMARY_INTRO = (
    f"How far each row holds up: the longest eval length up to which every length from the "
    f"training context on stays within {TOLERANCE:.0%} of the perplexity at the training context "
    "(the ratio in the tables); and, where the runs were tested on passkeys, the effective window "
    "and the accuracy within the training context."
)

POSITION_INTRO = (
    "Mean next-token loss (nats per token) by position in the window, one line per eval length, "
    "mean over seeds. Positions are binned in doubling widths, each bin drawn at its last position "
    "(log scale). The dashed line is the training context: positions to its right were never "
    "trained on."
)

PASSKEY_INTRO = (
    "Accuracy of retrieving a passkey hidden at each depth of a context of each length, in percent "
    "of the trials, mean over seeds; n/a: a length the encoding cannot serve, OOM: out of memory."
)


def write_report(root: str | Path, html: bool = False) -> Report:
    root = Path(root)
    found = collect(root)
    problems = problem_lines(found, root)
    if not found.runs and not found.unreadable:
        log.warning("no results.json under %s; no report written", root)
        return Report(path=None, plot=None, problems=problems)

    # fast_dev_run checks the wiring on a batch or two: its numbers measure nothing
    left_out = [run for run in found.runs if run.is_fast_dev_run]
    rows = build_rows([run for run in found.runs if not run.is_fast_dev_run])
    protocols = protocols_of(rows)
    # with nothing scored anywhere (only failed jobs), one table still says what happened
    tables = [(protocol, markdown_table(rows, protocol)) for protocol in protocols] or [
        (None, markdown_table(rows, None))
    ]

    parts = ["# Length extrapolation report", "", INTRO]
    if note := seed_count_note(rows):
        parts += ["", note]
    if summary := [summary_line(row, protocols) for row in rows if row.measured]:
        parts += ["", "## Summary", "", SUMMARY_INTRO, "", *summary]
    for protocol, table in tables:
        parts += ["", f"## Perplexity, protocol {protocol.title}" if protocol else "## Results", "", table]
    plot_path, why_no_plot = extrapolation_part(rows, protocols, root)
    parts += ["", f"No plot: {why_no_plot}." if why_no_plot else f"![perplexity vs eval length]({PLOT_FILENAME})"]
    if left_out:
        folders = ", ".join(_relative(run.folder, root) for run in left_out)
        parts += ["", f"Left out of the table: {len(left_out)} fast_dev_run job(s), which check wiring: {folders}."]
    position_lines, position_plots = per_position_part(rows, protocols, root)
    passkey_lines, passkey_plots = passkey_part(rows, root)
    parts += position_lines + passkey_lines
    parts += ["", "## Commands", *command_lines(rows, root)]
    parts += ["", "## Set-up", *describe_setup(rows)]
    if problems:
        parts += ["", "## Problems", *[f"- {problem}" for problem in problems]]
    if reused := reuse_lines(found.runs, root):
        parts += ["", "## Reused and resumed jobs", *reused]
    if without_value := lengths_without_value_lines(rows, protocols):
        parts += ["", "## Lengths without a value", *without_value]
    notes = sorted({run.flat_config.get("report_note") for run in found.runs} - {None})
    if notes:
        parts += ["", "## What this study can and cannot show", *notes]

    path = root / REPORT_FILENAME
    path.write_text("\n".join(parts) + "\n")
    images = ([plot_path] if plot_path else []) + position_plots + passkey_plots
    html_path = None
    if html:
        from poslab.report_html import write_html

        html_path = write_html(path)
    also = ", ".join(str(item) for item in [*images, *([html_path] if html_path else [])])
    wrote = f"wrote {path}" + (f" and {also}" if also else "") + (f" (no plot: {why_no_plot})" if why_no_plot else "")
    tables_text = "\n\n".join(table for _, table in tables)
    print(f"\n{tables_text}\n\n{wrote}")
    return Report(path=path, plot=plot_path, problems=problems, rows=rows, images=images, html=html_path)


def extrapolation_part(rows: list[Row], protocols: list[Protocol], root: Path) -> tuple[Path | None, str | None]:
    """extrapolation.png, a panel per protocol that has a finite perplexity; or why there is none."""
    panels = []
    for protocol in protocols:
        lines = curves(rows, protocol)
        if any(line.points for line in lines):
            panels.append((protocol, lines))
    path = root / PLOT_FILENAME
    no_data = None if panels else "no run has a finite perplexity at any eval length"
    why_not = draw_or_say_why_not(functools.partial(plot_extrapolation, panels), path, no_data)
    return (None, why_not) if why_not else (path, None)


def per_position_part(rows: list[Row], protocols: list[Protocol], root: Path) -> tuple[list[str], list[Path]]:
    """A plot of the loss by position per protocol that recorded it, and its section of
    report.md; nothing when no run recorded it."""
    lines, written, with_data = [], [], set()
    for protocol in protocols:
        panels = position_panels(rows, protocol)
        if not panels:
            continue
        with_data |= {panel.label for panel in panels}
        path = root / f"{PER_POSITION_PLOT_PREFIX}{protocol.slug}.png"
        why_not = draw_or_say_why_not(functools.partial(plot_per_position, protocol, panels), path)
        if why_not:
            lines += ["", f"No plot of the loss by position for protocol {protocol.title}: {why_not}."]
        else:
            lines += ["", f"![loss by position, protocol {protocol.title}]({path.name})"]
            written.append(path)
    for earlier in root.glob(f"{PER_POSITION_PLOT_PREFIX}*.png"):
        if earlier not in written:  # an earlier report's, never to be read as this one's
            earlier.unlink()
    if not with_data:
        return [], []
    without = [row.label for row in rows if row.measured and row.label not in with_data]
    if without:
        lines += ["", f"No loss by position recorded for: {', '.join(without)}."]
    return ["", "## Loss by position in the window", "", POSITION_INTRO, *lines], written


def passkey_part(rows: list[Row], root: Path) -> tuple[list[str], list[Path]]:
    """passkey.png, a heatmap per row that was tested on passkeys, and its section of report.md;
    nothing when no run was."""
    grids = [grid for row in rows if row.measured and (grid := passkey_grid(row))]
    path = root / PASSKEY_PLOT_FILENAME
    if not grids:
        draw_or_say_why_not(plot_passkey, path, "no passkey results")  # removes an earlier report's
        return [], []
    why_not = draw_or_say_why_not(functools.partial(plot_passkey, grids), path)
    lines = ["", "## Passkey retrieval", "", PASSKEY_INTRO, ""]
    lines.append(f"No passkey plot: {why_not}." if why_not else f"![passkey retrieval accuracy]({path.name})")
    without = [row.label for row in rows if row.measured and not any(run.passkey for run in row.runs)]
    if without:
        lines += ["", f"No passkey results for: {', '.join(without)}."]
    return lines, [] if why_not else [path]


def format_problems(root: str | Path, problems: list[str]) -> str:
    return f"{len(problems)} problem(s) in {root}:\n" + "\n".join(f"  - {problem}" for problem in problems)


class ReportCallback(Callback):
    """Hydra callback: write the report for the sweep folder when a multirun ends, and keep its
    problems in LAST_SWEEP_PROBLEMS."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = config.hydra.sweep.dir
        try:
            written = write_report(sweep_dir)
            problems = written.problems or ([] if written.path else [f"{sweep_dir}: no results.json"])
        except Exception as error:  # a report failure must not hide the finished runs
            log.error("report for %s failed: %s", sweep_dir, _one_line(error))
            problems = [f"{sweep_dir}: the report could not be written: {_one_line(error)}"]
        LAST_SWEEP_PROBLEMS[:] = problems
        if problems:
            print(format_problems(sweep_dir, problems))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="poslab-report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="folder searched recursively for results.json (e.g. outputs/multirun/...)")
    parser.add_argument(
        "--html", action="store_true", help="also write DIR/report.html: one self-contained page, plots inline"
    )
    args = parser.parse_args(argv)
    if not Path(args.dir).is_dir():
        parser.error(f"{args.dir}: not a folder")
    report = write_report(args.dir, html=args.html)
    if report.path is None:
        print(f"poslab-report: error: no results.json under {args.dir}", file=sys.stderr)
        sys.exit(1)
    if report.problems:
        print(format_problems(args.dir, report.problems))


# --- small helpers ----------------------------------------------------------------------------


def _is_finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value, missing: str | None = "-") -> str | None:
    """An integer with thousands separators."""
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else missing


def _value_text(value) -> str:
    """A config value as written on the command line."""
    if value is _ABSENT:
        return "unset"
    if value is None or isinstance(value, (bool, list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _natural_key(text: str) -> list:
    """Sort 'context=64' before 'context=128'."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _relative(path: Path, root: Path) -> str:
    try:
        relative = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(relative) if str(relative) != "." else (root.resolve().name or str(root))


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _escape(cells: list[str]) -> list[str]:
    return [cell.replace("|", "\\|") for cell in cells]


if __name__ == "__main__":
    main()
