"""Which runs are seeds of one experiment, how each experiment is labelled, and the rows of the
tables: the measured seeds of an experiment, or one failed or diverged job."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property

from poslab.config.evaluation import evaluation_settings
from poslab.records.results import comparable_config
from poslab.report.loading import Protocol, Run, protocol_order
from poslab.report.text import ABSENT, is_unresolved, natural_key, value_text

# How one poslab-eval run bundled its work, not what a row measured (each row's own variant is in
# its run's record): runs that differ only in it are seeds of one experiment
BUNDLING_KEYS = ("eval.variants",)
# What poslab-eval put on the checkpoint (a temperature, a window): named in an eval row's name
# (evaluation_settings), so not repeated among its label keys
EVAL_METHOD_KEYS = ("eval.logit_temperature", "eval.window.local", "eval.window.sinks", "eval.window.method")


def experiment_config(config: dict | None) -> dict:
    """The comparable config less the bundling keys: what makes runs one experiment."""
    return {k: v for k, v in comparable_config(config, ignore_seed=True).items() if k not in BUNDLING_KEYS}


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
        return None if config is None else experiment_config(config)

    @property
    def name(self) -> str:
        """The label before any config key: the encoding, or for eval runs, the variant and the
        checkpoint it scored."""
        first = self.first
        if first.job != "eval":
            return first.encoding
        variant = "+".join([first.info.get("variant") or first.encoding, *self.evaluation_settings])
        trained_as = first.info.get("trained_as") or "unknown"
        checkpoints = sorted({run.checkpoint_run for run in self.measured or self.runs})
        if len(checkpoints) == 1:
            return f"{variant} on {trained_as} checkpoint ({checkpoints[0]})"
        return f"{variant} on {trained_as} checkpoints"

    @property
    def evaluation_settings(self) -> list[str]:
        """What an eval row was scored with beyond its variant: the temperature on its logits
        (poslab-eval's eval.logit_temperature, or the checkpoint's own) and eval.window, e.g.
        ['logn', 'streaming_llm(sinks=4, local=128)']."""
        if self.first.job != "eval":
            return []
        config = self.first.results.get("config") or {}
        temperature = ((config.get("model") or {}).get("net") or {}).get("logit_temperature")
        scored = {
            **(config.get("eval") or {}),
            "logit_temperature": None if temperature in (None, "none") else temperature,
        }
        return evaluation_settings(scored)

    def is_own_label_key(self, key: str) -> bool:
        """Whether an eval row's name already says what `key` holds (its temperature, its window)."""
        return self.first.job == "eval" and (key in EVAL_METHOD_KEYS or key == "model.net.logit_temperature")


def experiment_key(run: Run) -> tuple:
    config = experiment_config(run.results.get("config"))
    return (
        run.job,
        run.encoding,
        run.info.get("variant"),
        run.info.get("trained_as"),
        json.dumps(config, sort_keys=True, default=str),
    )


def group_experiments(runs: list[Run]) -> list[Experiment]:
    groups: dict[tuple, list[Run]] = defaultdict(list)
    for run in runs:
        groups[experiment_key(run)].append(run)
    return [Experiment(sorted(group, key=lambda run: natural_key(str(run.seed)))) for group in groups.values()]


def _is_encoding_key(key: str) -> bool:
    return key in ("pos_enc", "pos_enc_name") or key.startswith("pos_enc.")


def varying_keys(configs: list[dict]) -> list[str]:
    """Keys whose values are not the same in every config; a key absent from some config varies.
    An unresolved interpolation (a job that failed before its config resolved) says nothing of
    the value, so it neither varies nor matches."""
    values: dict[str, set[str]] = defaultdict(set)
    for key in {key for config in configs for key in config}:
        for config in configs:
            value = config.get(key, ABSENT)
            if not is_unresolved(value):
                values[key].add(value if value is ABSENT else json.dumps(value, sort_keys=True, default=str))
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def label_experiments(experiments: list[Experiment]) -> None:
    """Label each experiment by its name, followed by the config keys that vary between
    experiments. The encoding's own keys (pos_enc.*) are left out when the names already tell the
    rows apart, and kept when experiments of one name differ only inside them."""
    known = [e for e in experiments if e.config is not None]
    shared_keys = [key for key in varying_keys([e.config for e in known]) if not _is_encoding_key(key)]
    same_name_and_keys: dict[tuple, list[Experiment]] = defaultdict(list)
    for experiment in known:
        values = tuple(value_text(experiment.config.get(key, ABSENT)) for key in shared_keys)
        same_name_and_keys[experiment.name, values].append(experiment)
    for same in same_name_and_keys.values():
        encoding_keys = [
            key for key in varying_keys([e.config for e in same]) if _is_encoding_key(key) and key != "pos_enc_name"
        ]
        for experiment in same:
            keys = shared_keys + encoding_keys
            experiment.label_keys = [key for key in keys if not experiment.is_own_label_key(key)]
    for experiment in experiments:
        settings = [
            f"{key}={value_text(experiment.config.get(key, ABSENT))}"
            for key in experiment.label_keys
            if not is_unresolved(experiment.config.get(key))
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
    experiments.sort(key=lambda e: (e.first.job != "train", natural_key(e.label)))
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


def scored_lengths(rows: list[Row], protocol: Protocol) -> list[int]:
    return sorted({length for row in rows if row.measured for run in row.runs for length in run.rows_at(protocol)})
