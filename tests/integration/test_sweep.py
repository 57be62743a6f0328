"""A tiny multirun over every encoding, end to end: results.json per job, an offline wandb run
per job, and the report written by the Hydra callback when the sweep ends."""

import re
from pathlib import Path

import pytest

from helpers import ENCODINGS, TINY, run_train
from poslab.commands.report import main as report_main
from poslab.records.results import config_differences, find_results, read_results
from poslab.report.markdown import write_report


def test_multirun_over_all_encodings(tmp_path, text_corpus):
    """Also: a YAML alone, dropped into a pos_enc/ folder on the config path, joins the sweep."""
    extra = tmp_path / "my_conf" / "pos_enc"
    extra.mkdir(parents=True)
    (extra / "rope_base500.yaml").write_text(
        "_target_: poslab.encodings.RoPE\nn_embd: ${model.net.n_embd}\nn_head: ${model.net.n_head}\nbase: 500.0\n"
    )
    encodings = sorted([*ENCODINGS, "rope_base500"])
    # 4 layers: irope drops RoPE in every 4th layer and refuses a model without one
    overrides = [o for o in TINY if not o.startswith(("logger=", "model.net.n_layer="))] + ["model.net.n_layer=4"]
    out = run_train(
        [
            "-m",
            f"--config-dir={tmp_path / 'my_conf'}",
            "pos_enc=glob(*)",
            "data=text_files",
            f"data.corpus.train={text_corpus}/*.txt",
            *overrides,
            "trainer.max_steps=4",
            "trainer.val_check_interval=4",
            f"paths.log_dir={tmp_path / 'logs'}",
            "run_group=test-sweep",
        ],
        cwd=tmp_path,
        WANDB_MODE="offline",
    )
    (sweep,) = (tmp_path / "logs" / "multirun").iterdir()
    results = [read_results(p) for p in find_results(sweep)]
    assert sorted(r["run"]["pos_enc"] for r in results) == encodings
    assert next(r for r in results if r["run"]["pos_enc"] == "rope_base500")["config"]["pos_enc"]["base"] == 500.0
    for r in results:
        run_dir = Path(r["run"]["output_dir"])
        assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert r["run"]["group"] == "test-sweep" and r["train"]["steps"] == 4
        rows = {row["eval_length"]: row["status"] for row in r["extrapolation"]}
        expected = "unsupported" if r["run"]["pos_enc"] == "learned" else "ok"
        assert rows == {16: "ok", 32: expected, 64: expected}

    report = (sweep / "report.md").read_text()
    assert (sweep / "extrapolation.png").stat().st_size > 1000
    for name in encodings:
        assert f"| {name} |" in report
    assert "| learned | " in report and "unsupported" in report
    assert "| encoding |" in out.stdout  # the table is printed at the end of the sweep
    # what every job would repeat is said once, by the first, and the libraries' tips not at all
    printed = out.stdout + out.stderr
    assert printed.count("GPU available") <= 1 and printed.count("Total params") <= 1
    for noise in ("Run history", "anonymous setting", "Tip:", "weights_only", "LeafSpec", "Downloading data"):
        assert noise not in printed, noise
    assert printed.count("wandb: offline run in ") == len(encodings)  # one line per job says where its run is
    assert re.search(r"nonoverlapping length 64: \d+ forward passes of 64 tokens", printed)  # progress per length


def test_report_command_on_a_folder_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert "no results.json" in capsys.readouterr().err


def test_the_training_length_sweep_lays_each_encoding_out_against_its_steps(tmp_path, text_corpus):
    """experiment=training_length_cpu, tiny: trainer.max_steps is a sweep axis, each job's folder
    names its step count, and the sweep's report has the training-length view."""
    overrides = [o for o in TINY if not o.startswith(("eval.lengths_x=", "logger="))]
    run_train(
        [
            "-m",
            "experiment=training_length_cpu",
            "pos_enc=rope,alibi",
            "trainer.max_steps=2,4",
            "trainer.val_check_interval=2",
            "data=text_files",
            f"data.corpus.train={text_corpus}/*.txt",
            *overrides,
            "eval.lengths_x=[1,4,16]",
            "eval.stride=8",
            "logger=csv",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
        ],
        cwd=tmp_path,
        WANDB_MODE="disabled",
    )
    sweep = tmp_path / "sweep"
    folders = sorted(path.parent.name for path in find_results(sweep))
    assert folders == ["0_rope_2steps_s0", "1_rope_4steps_s0", "2_alibi_2steps_s0", "3_alibi_4steps_s0"]
    report = (sweep / "report.md").read_text()
    assert "| rope (trainer.max_steps=2) |" in report and "| rope (trainer.max_steps=4) |" in report
    view = report.split("## Training length")[1]
    assert "### Protocol sliding (stride 8)" in view and "| encoding | 2 steps | 4 steps |" in view
    assert re.search(r"\| alibi \| [\d.]+x \| [\d.]+x \|", view)
    assert (sweep / "training_length.png").stat().st_size > 1000


def test_the_converged_study_takes_the_axis_run_as_its_seed_0(tmp_path, text_corpus):
    """experiment=lm_converged is the axis at one step count with more seeds: the axis's seed-0
    job and the study's seed-1 job differ in nothing but labels and the seed, and a report over
    both folders (as experiments/lm_converged/run.sh lays them out) makes them one row of two seeds."""
    overrides = [o for o in TINY if not o.startswith(("eval.lengths_x=", "logger="))]
    common = ["pos_enc=rope", "trainer.max_steps=2", "trainer.val_check_interval=2", "data=text_files"]
    common += [f"data.corpus.train={text_corpus}/*.txt", *overrides, "eval.lengths_x=[1,4]", "eval.stride=8"]
    common += ["logger=csv"]
    for experiment, seed, folder in (("training_length_cpu", 0, "axis"), ("lm_converged", 1, "part1")):
        run_train(
            ["-m", f"experiment={experiment}", f"seed={seed}", *common, f"hydra.sweep.dir={tmp_path / folder}"],
            cwd=tmp_path,
            WANDB_MODE="disabled",
        )
    (axis,) = [read_results(p) for p in find_results(tmp_path / "axis")]
    (converged,) = [read_results(p) for p in find_results(tmp_path / "part1")]
    assert Path(converged["run"]["output_dir"]).name == "0_rope_s1"
    assert converged["config"]["tags"] != axis["config"]["tags"]  # labelled by their own experiments
    assert config_differences(axis["config"], converged["config"]) == []
    report = write_report(tmp_path)
    (row,) = [row for row in report.rows if row.label == "rope"]
    assert sorted(run.seed for run in row.runs) == [0, 1]
