"""poslab-dashboard's view against what poslab really logs: every panel, column, grouping and
filter key of the view must have been recorded by a real offline wandb run of poslab (a training
run with both protocols and passkey, an eval run scoring two variants), read back from the runs'
own files; and --dry-run writes the view without contacting wandb."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from helpers import SCRIPTS, TINY, TINY_TASK, read_offline_wandb_run, write_text_corpus
from poslab.commands.dashboard import main
from poslab.records.dashboard import Panel, panel_keys, poslab_view, specification

# the dashboard's default lengths (1x to 16x, passkey 1x to 4x) at a context short enough to be cheap
SETTINGS = [
    *(o for o in TINY if not o.startswith(("logger=", "eval.lengths_x", "eval.num_tokens", "eval.batch_tokens"))),
    "data.context=32",
    "eval.lengths_x=[1,2,4,8,16]",
    "eval.num_tokens=1024",
    "eval.batch_tokens=1024",
    "eval.protocols=[nonoverlapping,sliding]",
    "eval.stride=16",
    "logger=wandb",
]
GROUP = "dashboard-test"


def _run(script: str, args: list[str], cwd: Path) -> None:
    out = subprocess.run(
        [str(SCRIPTS / script), *args],
        cwd=cwd,
        env={**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """What a training run (passkey on), an eval run of two variants and a copy-task run logged
    to wandb, offline."""
    root = tmp_path_factory.mktemp("dashboard")
    corpus = write_text_corpus(root / "corpus")
    train = root / "train"
    _run(
        "poslab-train",
        [
            "data=text_files",
            f"data.corpus.train={corpus}/*.txt",
            *SETTINGS,
            "trainer.max_steps=3",
            "trainer.log_every_n_steps=1",
            "eval.passkey.enabled=true",
            "eval.passkey.trials=2",
            f"run_group={GROUP}",
            f"hydra.run.dir={train}",
        ],
        root,
    )
    evaluation = root / "eval"
    _run(
        "poslab-eval",
        [
            f"ckpt_path={train}/checkpoints/last.ckpt",
            *(o for o in SETTINGS if not o.startswith(("model.", "data."))),
            "eval.variants=[rope,rope_pi]",
            f"run_group={GROUP}",
            f"hydra.run.dir={evaluation}",
        ],
        root,
    )
    _run(
        "poslab-train",
        [
            "task=copy",
            *(o for o in TINY_TASK if not o.startswith("logger=")),
            "logger=wandb",
            f"run_group={GROUP}",
            f"hydra.run.dir={root / 'task'}",
        ],
        root,
    )
    files = sorted(root.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 4, files  # the training run, one run per variant, the task run
    return [read_offline_wandb_run(path) for path in files]


def unlogged(view, runs) -> list[str]:
    """Every key the view reads that no run recorded where the view reads it (a media key is
    recorded in the history, as the image's fields)."""
    recorded = {
        "history": set().union(*(run.history for run in runs)),
        "media": set().union(*(run.history for run in runs)),
        "summary": set().union(*(run.summary for run in runs)),
        "config": set().union(*(run.config for run in runs)),
    }
    return [f"{source}:{key}" for source, keys in panel_keys(view).items() for key in sorted(keys - recorded[source])]


def test_every_panel_reads_keys_a_real_run_logged(logged):
    view = poslab_view("someone", "poslab", group=GROUP, tasks=["copy"], task_ratios=[1, 1.5, 2, 3, 4])
    assert unlogged(view, logged) == []
    # and the runs carry what the view groups by, at the top level of their config
    names = sorted(
        (run.config["pos_enc_name"], run.config["trained_as"], run.config["job"], run.config["task"] or "")
        for run in logged
    )
    assert names == [
        ("rope", "rope", "eval", ""),
        ("rope", "rope", "train", ""),
        ("rope", "rope", "train", "copy"),
        ("rope_pi", "rope", "eval", ""),
    ]
    assert {run.config["family"] for run in logged} == {"rotary"} and {run.config["run_group"] for run in logged} == {
        GROUP
    }


def test_a_panel_for_a_metric_no_run_logs_is_caught(logged):
    view = poslab_view("someone", "poslab", group=GROUP)
    view.sections[0].panels.append(
        Panel("line", "typo", ["extrap/nonoverlapping/ppl_ration"], "history", x="extrap/eval_length")
    )
    view.sections[1].panels.append(Panel("bar", "never logged", ["extrap/ppl@32x"], "summary"))
    view.columns.append("config:encoding")
    assert unlogged(view, logged) == [
        "history:extrap/nonoverlapping/ppl_ration",
        "summary:extrap/ppl@32x",
        "config:encoding",
    ]


def test_ratio_is_logged_against_eval_length_and_as_summaries(logged):
    train = next(run for run in logged if run.config["job"] == "train" and not run.config["task"])
    for prefix in ("extrap", "extrap/nonoverlapping", "extrap/sliding"):
        assert f"{prefix}/ppl_ratio" in train.history
        assert {f"{prefix}/ppl_ratio@{n}x" for n in (1, 2, 4, 8, 16)} <= train.summary


def test_dry_run_writes_the_view_and_sends_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    out = tmp_path / "view.json"
    main(["--entity", "someone", "--project", "poslab", "--group", GROUP, "--dry-run", str(out)])
    spec = json.loads(out.read_text())
    assert spec["view"]["group"] == GROUP and spec["wandb_view"]["entity"] == "someone"
    titles = [panel["title"] for section in spec["view"]["sections"] for panel in section["panels"]]
    assert "perplexity / in-length perplexity" in titles and "passkey retrieval by length and depth" in titles
    assert not any(title.startswith("copy:") for title in titles)  # task sections only when asked
    # the view model groups by encoding, filters to the group, sorts by the 10-percent summary
    run_set = spec["wandb_view"]["spec"]["section"]["runSets"][0]
    assert run_set["grouping"] == [{"section": "config", "name": "pos_enc_name.value"}]
    assert run_set["filters"]["filters"][0]["key"] == {"section": "config", "name": "run_group"}
    assert run_set["sort"]["keys"][0]["key"] == {"section": "summary", "name": "extrap/max_len_within_10pct"}
    assert "sections, " in capsys.readouterr().out
    expected = specification(poslab_view("someone", "poslab", group=GROUP, name=f"poslab: {GROUP}"))
    assert spec["view"] == expected["view"]


def test_without_credentials_it_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    with pytest.raises(SystemExit) as exit_:
        main(["--entity", "someone"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no API key" in err[0] and "--dry-run" in err[0]


def test_url_updates_the_saved_view_in_place(monkeypatch, capsys):
    import wandb_workspaces.workspaces as ws

    saved = ws.Workspace(entity="someone", project="poslab", name="old", sections=[])
    saved._internal_name, saved._internal_id = "abc123", "view-id"
    monkeypatch.setattr("poslab.commands.dashboard.why_wandb_cannot_go_online", lambda: None)
    monkeypatch.setattr(ws.Workspace, "from_url", classmethod(lambda cls, url: saved))
    sent = []
    monkeypatch.setattr(ws.Workspace, "save", lambda self: sent.append(self._to_model()) or self)
    monkeypatch.setattr(
        ws.Workspace, "url", property(lambda self: f"https://wandb.ai/someone/poslab?nw={self._internal_name}")
    )
    main(["--entity", "someone", "--url", "https://wandb.ai/someone/poslab?nw=abc123"])
    (model,) = sent
    assert (model.name, model.id) == ("abc123", "view-id")  # the same view, not a new one
    assert model.display_name == "poslab: length extrapolation" and len(saved.sections) == 4
    assert "nw=abc123" in capsys.readouterr().out
