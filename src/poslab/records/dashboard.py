"""The wandb view poslab-dashboard saves: which panels show which logged keys, laid out for a
comparison of many encodings over seeds.

The layout is plain data (`View`, `Section`, `Panel`), written from the metric names the loggers
use (records/loggers.py), so that a test can hold every panel against the keys a real offline run
logged. `to_workspace` turns it into a `wandb_workspaces` Workspace, the library wandb publishes
for saved views; `specification` is what `--dry-run` writes: the layout and the exact view model
that saving would send, with nothing contacted.

Every line panel groups runs by the encoding they were scored under (`pos_enc_name`) and draws
the mean over the group's runs (its seeds) with a min-max band: with three seeds the band shows
every seed, which a standard error would not.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from poslab.evaluation.protocols import PROTOCOLS
from poslab.records.loggers import (
    LENGTH_STEP,
    POSITION_LOSS,
    POSITION_STEP,
    RATIO,
    TASK_STEP,
    WITHIN_SUMMARY,
    metric_prefixes,
    task_prefixes,
)

GROUP_BY = "pos_enc_name"
# wandb's default is 10 runs per panel: a comparison of twenty encodings over three seeds needs more
MAX_RUNS = 300
TRAIN_STEP = "trainer/global_step"  # Lightning's step for train/* and val/*


@dataclass
class Panel:
    """One chart. `source` says where its keys are logged: 'history' (a line against `x`),
    'summary' (a bar per group), 'media' (images logged under the key)."""

    kind: str  # "line", "bar" or "media"
    title: str
    keys: list[str]
    source: str
    x: str | None = None
    log_x: bool = False
    log_y: bool = False


@dataclass
class Section:
    name: str
    panels: list[Panel]
    is_open: bool = True


@dataclass
class View:
    entity: str
    project: str
    name: str
    group: str | None  # runs of one run_group only (a sweep), or every run of the project
    sections: list[Section]
    group_by: str = GROUP_BY
    columns: list[str] = field(default_factory=list)  # the runs table: "config:KEY" or "summary:KEY"
    sort_by: str = ""  # a summary key, longest first
    max_runs: int = MAX_RUNS


def _line(title: str, key: str, x: str, log_x: bool = True, log_y: bool = False) -> Panel:
    return Panel("line", title, [key], "history", x=x, log_x=log_x, log_y=log_y)


def _bar(title: str, key: str) -> Panel:
    return Panel("bar", title, [key], "summary")


def _extrapolation_section(protocol: str, ratios: list[float]) -> Section:
    # the protocol's own names (extrap/nonoverlapping/ppl, ...), which every run that scored it logs
    prefix = metric_prefixes(protocol)[0]
    beyond = [ratio for ratio in ratios if ratio > 1]
    panels = [
        _line("perplexity against eval length", f"{prefix}/ppl", LENGTH_STEP, log_y=True),
        _line("perplexity / in-length perplexity", f"{prefix}/{RATIO}", LENGTH_STEP, log_y=True),
        _line("bits per byte against eval length", f"{prefix}/bpb", LENGTH_STEP),
        *(_bar(f"perplexity ratio at {ratio:g}x", f"{prefix}/{RATIO}@{ratio:g}x") for ratio in beyond),
        _bar("longest length within 10% of in-length perplexity", f"{prefix}/{WITHIN_SUMMARY}"),
        *(
            _line(
                f"loss by position in the window at {ratio:g}x", f"{prefix}/{POSITION_LOSS}@{ratio:g}x", POSITION_STEP
            )
            for ratio in ([ratios[0], ratios[-1]] if len(ratios) > 1 else ratios)
        ),
    ]
    return Section(f"Extrapolation, {protocol} windows", panels, is_open=protocol == PROTOCOLS[0])


def _passkey_section(ratios: list[float]) -> Section:
    panels = [
        *(_bar(f"passkey accuracy at {ratio:g}x", f"passkey/accuracy@{ratio:g}x") for ratio in ratios),
        _bar("passkey: effective window (tokens)", "passkey/effective_window"),
        _bar("passkey: accuracy within the training context", "passkey/in_length_accuracy"),
        Panel("media", "passkey retrieval by length and depth", ["passkey/heatmap"], "media"),
    ]
    return Section("Passkey retrieval", panels, is_open=False)


def _task_section(task: str, ratios: list[float]) -> Section:
    # the task's own names (task/copy/exact_match), so the panels need no filter by task
    prefix = task_prefixes(task)[1]
    panels = [
        _line(f"{task}: exact match (greedy decoding) against input length", f"{prefix}/exact_match", TASK_STEP),
        _line(f"{task}: token accuracy (teacher-forced) against input length", f"{prefix}/token_accuracy", TASK_STEP),
        *(
            _bar(f"{task}: exact match at {ratio:g}x the longest training length", f"{prefix}/exact_match@{ratio:g}x")
            for ratio in ratios
        ),
    ]
    return Section(f"Task: {task}", panels, is_open=True)


def _training_section() -> Section:
    return Section(
        "Training",
        [
            _line("training loss", "train/loss", TRAIN_STEP, log_x=False),
            _line("validation loss", "val/loss", TRAIN_STEP, log_x=False),
        ],
        is_open=False,
    )


def poslab_view(
    entity: str,
    project: str,
    *,
    group: str | None = None,
    name: str = "poslab: length extrapolation",
    ratios: list[float] = (1, 2, 4, 8, 16),
    passkey_ratios: list[float] = (1, 2, 4),
    protocols: list[str] = PROTOCOLS,
    tasks: list[str] = (),
    task_ratios: list[float] = (1, 1.5, 2, 3, 4),
) -> View:
    """The view for runs evaluated at `ratios` x their training context under `protocols`, and
    a section per algorithmic task in `tasks` (scored at `task_ratios` x the longest training
    length). A panel for a length no run scored stays empty in wandb; it is not an error."""
    ratios = sorted(set(ratios))
    summaries = [f"extrap/ppl@{ratio:g}x" for ratio in ratios] + [
        f"extrap/{RATIO}@{ratio:g}x" for ratio in ratios if ratio > 1
    ]
    return View(
        entity=entity,
        project=project,
        name=name,
        group=group,
        sections=[
            *(_task_section(task, sorted(set(task_ratios))) for task in tasks),
            *(_extrapolation_section(protocol, ratios) for protocol in protocols),
            _passkey_section(sorted(set(passkey_ratios))),
            _training_section(),
        ],
        columns=[
            *(
                f"config:{key}"
                for key in (GROUP_BY, "trained_as", "family", "mechanism", "seed", "parameters", "max_steps")
            ),
            *(["config:task"] if tasks else []),
            *(f"summary:{key}" for key in (*summaries, f"extrap/{WITHIN_SUMMARY}")),
        ],
        sort_by=f"extrap/{WITHIN_SUMMARY}",
    )


def to_workspace(view: View):
    """The view as a wandb_workspaces Workspace (not saved)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    grouped = {"groupby": wr.Config(view.group_by), "groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}

    def panel(p: Panel):
        if p.kind == "line":
            return wr.LinePlot(
                title=p.title,
                x=p.x,
                y=list(p.keys),
                log_x=p.log_x,
                log_y=p.log_y,
                max_runs_to_show=view.max_runs,
                **grouped,
            )
        if p.kind == "bar":
            return wr.BarPlot(
                title=p.title, metrics=[wr.SummaryMetric(k) for k in p.keys], max_runs_to_show=view.max_runs, **grouped
            )
        return wr.MediaBrowser(title=p.title, media_keys=list(p.keys), mode="gallery")

    def column(key: str):
        section, name = key.split(":", 1)
        return ws.Config(name) if section == "config" else ws.Summary(name)

    return ws.Workspace(
        entity=view.entity,
        project=view.project,
        name=view.name,
        sections=[
            ws.Section(name=s.name, panels=[panel(p) for p in s.panels], is_open=s.is_open) for s in view.sections
        ],
        settings=ws.WorkspaceSettings(max_runs=view.max_runs),
        runset_settings=ws.RunsetSettings(
            filters=[ws.Config("run_group") == view.group] if view.group else [],
            groupby=[ws.Config(view.group_by)],
            order=[ws.Ordering(ws.Summary(view.sort_by), ascending=False)] if view.sort_by else [],
            pinned_columns=list(view.columns),
        ),
    )


def specification(view: View) -> dict:
    """What --dry-run writes: the layout (sections, panels and the keys each reads) and the view
    model saving would send to wandb."""
    model = to_workspace(view)._to_model()
    return {"view": asdict(view), "wandb_view": model.model_dump(mode="json", by_alias=True, exclude_none=True)}


def panel_keys(view: View) -> dict[str, set[str]]:
    """Every key the view reads, by where it must have been logged: 'history' (a line's keys and
    its x), 'summary', 'media' and 'config' (grouping, filter and the runs table's columns)."""
    keys: dict[str, set[str]] = {"history": set(), "summary": set(), "media": set(), "config": {view.group_by}}
    for section in view.sections:
        for panel in section.panels:
            keys[panel.source].update(panel.keys)
            if panel.x:
                keys["history"].add(panel.x)
    if view.group:
        keys["config"].add("run_group")
    for column in view.columns:
        section, name = column.split(":", 1)
        keys[section].add(name)
    if view.sort_by:
        keys["summary"].add(view.sort_by)
    return keys
