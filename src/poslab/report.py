"""poslab-report DIR: every results.json under DIR -> DIR/report.md and DIR/extrapolation.png.

One table row per experiment. Runs whose configs differ only in the seed (or in keys that only
label a run) are seeds of one experiment and are averaged; runs that differ in anything else are
separate rows, labelled by what differs. A cell is the perplexity at one eval length and, in
brackets, its ratio to the same run's perplexity at its training context (per run, then averaged).
A failed or diverged job is a row that says so, never numbers. Nothing is dropped silently: failed
and diverged jobs, job folders without a results.json and unreadable results.json files are
listed as problems, and fast_dev_run jobs as left out.

Also a Hydra callback that writes the report when a multirun ends.
"""

from __future__ import annotations

import argparse
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

from poslab.results import FILENAME, STATUSES, comparable_config, find_results, flatten, read_results

log = logging.getLogger(__name__)

REPORT_FILENAME = "report.md"
PLOT_FILENAME = "extrapolation.png"

# The problems of the last sweep this process reported, for the console script's exit status.
# Updated in place, so a module that imported the name sees the new list.
LAST_SWEEP_PROBLEMS: list[str] = []

ROW_STATUS_TEXT = {"unsupported": "unsupported", "non_finite": "non-finite", "out_of_memory": "out of memory"}


# --- reading --------------------------------------------------------------------------------


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

    @cached_property
    def rows_by_length(self) -> dict[int, dict]:
        return {row["eval_length"]: row for row in self.results["extrapolation"]}

    def ppl_at(self, length: int | None) -> float | None:
        """The perplexity at this eval length if it is a finite number, else None."""
        row = self.rows_by_length.get(length)
        if row is None or row["status"] != "ok" or not _is_finite(row.get("ppl")):
            return None
        return row["ppl"]


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
    """One line of the table: the measured seeds of an experiment, averaged, or one failed or
    diverged job."""

    experiment: Experiment
    runs: list[Run]

    @property
    def label(self) -> str:
        return self.experiment.label

    @property
    def measured(self) -> bool:
        return self.runs[0].status == "ok"


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


@dataclass
class Cell:
    """One eval length of one row, over its seeds."""

    ppl: float | None  # mean over the seeds with a finite perplexity at this length
    ratio: float | None  # mean over those seeds of ppl / the same run's ppl at its training context
    without_value: list[tuple[object, str]]  # (seed, why) for the seeds with no finite perplexity


def cell_at(runs: list[Run], length: int) -> Cell | None:
    """None when no run scored this length."""
    if not any(length in run.rows_by_length for run in runs):
        return None
    ppls, ratios, without_value = [], [], []
    for run in runs:
        ppl = run.ppl_at(length)
        if ppl is None:
            row = run.rows_by_length.get(length)
            status = "not scored" if row is None else row["status"]
            # a row marked ok whose perplexity is missing or not a number is non-finite all the same
            status = "non_finite" if status == "ok" else status
            without_value.append((run.seed, ROW_STATUS_TEXT.get(status, status.replace("_", " "))))
            continue
        ppls.append(ppl)
        in_context = run.ppl_at(run.train_context)
        if in_context:
            ratios.append(ppl / in_context)
    return Cell(
        ppl=statistics.fmean(ppls) if ppls else None,
        ratio=statistics.fmean(ratios) if ratios else None,
        without_value=without_value,
    )


def cell_text(cell: Cell | None) -> str:
    if cell is None:
        return ""
    if cell.ppl is None:
        return " / ".join(sorted({why for _, why in cell.without_value}))
    text = f"{cell.ppl:.2f}" if math.isfinite(cell.ppl) else "non-finite"
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


def eval_lengths(rows: list[Row]) -> list[int]:
    return sorted({length for row in rows if row.measured for run in row.runs for length in run.rows_by_length})


def markdown_table(rows: list[Row], lengths: list[int]) -> str:
    # with no length scored anywhere (only failed jobs), one column still says what happened
    columns = [str(length) for length in lengths] or ["result"]
    lines = [
        "| encoding | parameters | seeds | " + " | ".join(columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        if row.measured:
            seeds = str(len(row.runs))
            cells = [cell_text(cell_at(row.runs, length)) for length in lengths]
        else:
            seeds = f"seed {row.runs[0].seed}"
            cells = [job_outcome(row.runs[0])] + [""] * (len(columns) - 1)
        parameters = " / ".join(sorted({_count(run.train.get("parameters")) for run in row.runs}))
        lines.append("| " + " | ".join(_escape([row.label, parameters, seeds, *cells])) + " |")
    return "\n".join(lines)


# --- plot -----------------------------------------------------------------------------------


@dataclass
class Curve:
    label: str
    points: list[tuple[int, float]]  # (eval length, mean perplexity), finite values only
    first_without_value: int | None  # the first length with no value, for the legend
    train_contexts: set[int]


def curves(rows: list[Row], lengths: list[int]) -> list[Curve]:
    result = []
    for row in rows:
        if not row.measured:
            continue
        cells = {length: cell_at(row.runs, length) for length in lengths}
        points = [(n, c.ppl) for n, c in cells.items() if c and c.ppl is not None and math.isfinite(c.ppl)]
        missing = [n for n, c in cells.items() if c and (c.ppl is None or not math.isfinite(c.ppl))]
        contexts = {run.train_context for run in row.runs if run.train_context}
        result.append(Curve(row.label, points, missing[0] if missing else None, contexts))
    return result


def plot(lines: list[Curve], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    markers = "osD^vP*Xh<>p"
    drawn = [line for line in lines if line.points]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for i, line in enumerate(drawn):
        label = line.label + (f" (no value from {line.first_without_value})" if line.first_without_value else "")
        # distinct markers and slight transparency keep coinciding runs (rope_pi = rope in context) visible
        ax.plot(
            *zip(*line.points, strict=True), marker=markers[i % len(markers)], markersize=7, alpha=0.85, label=label
        )
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
    ax.set_title("Length extrapolation (dotted: training context)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def draw_or_say_why_not(lines: list[Curve], path: Path) -> str | None:
    """Draw the plot; or return why there is none, removing the plot of an earlier report so that
    it is never read as this one's."""
    why_not = None
    if not any(line.points for line in lines):
        why_not = "no run has a finite perplexity at any eval length"
    else:
        try:
            plot(lines, path)
        except Exception as error:  # a plot that cannot be drawn must not cost the report
            log.error("plot %s failed: %s", path, error)
            why_not = f"the plot could not be drawn ({type(error).__name__}: {_one_line(error)})"
    if why_not and path.exists():
        path.unlink()
        why_not += f"; the {path.name} of an earlier report was removed"
    return why_not


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
    return f"{data.get('corpus', 'unknown corpus')}{python}, sha256 {str(data.get('sha256') or 'n/a')[:12]}, byte-level"


def _eval_figure(run: Run) -> str | None:
    rows = [row for row in run.results["extrapolation"] if row["status"] == "ok"]
    if not rows:
        return None
    protocols = ", ".join(sorted({str(row.get("protocol")) for row in rows}))
    scored = sorted({row.get("tokens_scored") or 0 for row in rows})
    tokens = _count(scored[0]) if len(scored) == 1 else f"{_count(scored[0])} to {_count(scored[-1])}"
    return f"protocol {protocols}, {tokens} held-out tokens scored at every length"


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


def lengths_without_value_lines(rows: list[Row]) -> list[str]:
    """Why a measured row has no number at a length, once per distinct reason."""
    lines = []
    for row in rows:
        if not row.measured:
            continue
        for run in row.runs:
            for length, scored in sorted(run.rows_by_length.items()):
                if scored["status"] != "ok":
                    status = ROW_STATUS_TEXT.get(scored["status"], scored["status"])
                    reason = f": {scored['reason']}" if scored.get("reason") else ""
                    line = f"- {row.label} at {length}: {status}{reason}"
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


INTRO = (
    "Perplexity per byte on the same held-out tokens at every eval length (columns, in tokens); "
    "in brackets, the ratio to the same run's perplexity at its training context. "
    "One row per experiment: runs that differ only in the seed are averaged (mean over seeds; "
    "ratios are taken per run, then averaged); rows are labelled by the settings that differ."
)


def write_report(root: str | Path) -> Report:
    root = Path(root)
    found = collect(root)
    problems = problem_lines(found, root)
    if not found.runs and not found.unreadable:
        log.warning("no results.json under %s; no report written", root)
        return Report(path=None, plot=None, problems=problems)

    # fast_dev_run checks the wiring on a batch or two: its numbers measure nothing
    left_out = [run for run in found.runs if run.is_fast_dev_run]
    rows = build_rows([run for run in found.runs if not run.is_fast_dev_run])
    lengths = eval_lengths(rows)
    table = markdown_table(rows, lengths)
    plot_path = root / PLOT_FILENAME
    why_no_plot = draw_or_say_why_not(curves(rows, lengths), plot_path)

    parts = ["# Length extrapolation report", "", INTRO, "", table, ""]
    if why_no_plot:
        parts += [f"No plot: {why_no_plot}."]
    else:
        parts += [f"![perplexity vs eval length]({PLOT_FILENAME})"]
    if left_out:
        folders = ", ".join(_relative(run.folder, root) for run in left_out)
        parts += ["", f"Left out of the table: {len(left_out)} fast_dev_run job(s), which check wiring: {folders}."]
    parts += ["", "## Set-up", *describe_setup(rows)]
    if problems:
        parts += ["", "## Problems", *[f"- {problem}" for problem in problems]]
    if reused := reuse_lines(found.runs, root):
        parts += ["", "## Reused and resumed jobs", *reused]
    if without_value := lengths_without_value_lines(rows):
        parts += ["", "## Lengths without a value", *without_value]
    notes = sorted({run.flat_config.get("report_note") for run in found.runs} - {None})
    if notes:
        parts += ["", "## What this study can and cannot show", *notes]

    path = root / REPORT_FILENAME
    path.write_text("\n".join(parts) + "\n")
    wrote = f"wrote {path} (no plot: {why_no_plot})" if why_no_plot else f"wrote {path} and {plot_path}"
    print(f"\n{table}\n\n{wrote}")
    return Report(path=path, plot=None if why_no_plot else plot_path, problems=problems, rows=rows)


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
    args = parser.parse_args(argv)
    if not Path(args.dir).is_dir():
        parser.error(f"{args.dir}: not a folder")
    report = write_report(args.dir)
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
