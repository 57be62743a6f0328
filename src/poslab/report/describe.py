"""The report's set-up section: what the runs share (model, data, evaluation, code) and what varies."""

from __future__ import annotations

from collections.abc import Callable

from poslab.report.grouping import Row
from poslab.report.loading import Run, protocol_order
from poslab.report.summary import passkey_mix_line
from poslab.report.text import ABSENT, count_text, is_unresolved, natural_key, value_text


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
    if steps is not None and run.train.get("examples") is not None:  # a task run counts examples
        return f"{steps} steps, {count_text(run.train['examples'])} examples"
    return None if steps is None else f"{steps} steps, {count_text(tokens)} tokens"


def _data_figure(run: Run) -> str | None:
    data = run.results.get("data")
    if not data:
        return None
    if task := data.get("task"):  # an algorithmic task: drawn from its seed, no corpus
        name, vocabulary, lengths = task.get("name"), task.get("vocab_size"), task.get("train_lengths")
        return f"task {name} (vocabulary {vocabulary}, trained at lengths {lengths})"
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
    tokens = count_text(scored[0]) if len(scored) == 1 else f"{count_text(scored[0])} to {count_text(scored[-1])}"
    return f"{named}, {tokens} held-out tokens scored at every length"


def _code_figure(run: Run) -> str | None:
    git = run.results.get("git")
    if not git:
        return None
    commit = str(git["commit"])[:10] if git.get("commit") else "unknown commit"
    return f"git {commit}" + (" (dirty)" if git.get("dirty") else "")


SETUP_FIGURES: tuple[tuple[str, Callable[[Run], str | None]], ...] = (
    ("model", _model_figure),
    ("parameters", lambda run: count_text(run.train.get("parameters"), missing=None)),
    ("training context", lambda run: count_text(run.train_context, missing=None)),
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
    seeds = ", ".join(sorted({str(run.seed) for run in runs}, key=natural_key)) or "none"
    lines = [f"- runs: {len(runs)} measured, in {len(measured)} rows; seeds: {seeds}"]
    not_measured = len(rows) - len(measured)
    if not_measured:
        lines[0] += f"; {not_measured} failed or diverged (see Problems)"
    lines += [line for name, figure in SETUP_FIGURES if (line := figure_line(name, figure, described))]
    # a resumed run's wall time counts only the attempt since its resume
    train_times = [
        run.train["wall_time_s"]
        for run in runs
        if run.job == "train" and run.train.get("wall_time_s") and run.info.get("resumed_from_step") is None
    ]
    if train_times:
        low, high = min(train_times), max(train_times)
        spread = f"{low:.0f} s" if round(low) == round(high) else f"{low:.0f} to {high:.0f} s"
        lines.append(f"- training time per run: {spread}")
    lines += varying_lines(rows)
    if mix := passkey_mix_line(rows):
        lines.append(mix)
    for row in measured:
        if row.experiment.first.job == "eval":
            checkpoints = ", ".join(f"{run.checkpoint_run} (seed {run.seed})" for run in row.runs)
            lines.append(f"- checkpoints of {row.label}: {checkpoints}")
    return lines


def varying_lines(rows: list[Row]) -> list[str]:
    """The encodings, and each config key that varies between rows with its values."""
    experiments = list({id(row.experiment): row.experiment for row in rows}.values())
    names = sorted({e.name for e in experiments}, key=natural_key)
    lines = [f"- encodings: {', '.join(names)}"] if len(names) > 1 else []
    keys = sorted({key for e in experiments for key in e.label_keys})
    for key in keys:
        values = {
            value_text(e.config.get(key, ABSENT))
            for e in experiments
            if e.config is not None and not is_unresolved(e.config.get(key))
        }
        lines.append(f"- varies between rows: {key} = {', '.join(sorted(values, key=natural_key))}")
    return lines
