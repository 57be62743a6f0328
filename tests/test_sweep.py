"""A tiny multirun over every encoding, end to end: results.json per job, an offline wandb run
per job, and the report written by the Hydra callback when the sweep ends."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ENCODINGS, TINY
from poslab.report import main as report_main
from poslab.results import find_results, read_results


def run_train(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "WANDB_SILENT": "true", **env}
    out = subprocess.run(
        [sys.executable, "-m", "poslab.train", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_multirun_over_all_encodings(tmp_path, text_corpus):
    """Also: a YAML alone, dropped into a pos_enc/ folder on the config path, joins the sweep."""
    extra = tmp_path / "my_conf" / "pos_enc"
    extra.mkdir(parents=True)
    (extra / "rope_base500.yaml").write_text(
        "_target_: poslab.encodings.RoPE\nn_embd: ${model.net.n_embd}\nn_head: ${model.net.n_head}\nbase: 500.0\n"
    )
    encodings = sorted([*ENCODINGS, "rope_base500"])
    overrides = [o for o in TINY if not o.startswith("logger=")]
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


def test_report_command_on_a_folder_without_results(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report_main([str(tmp_path)])
    assert exit_info.value.code == 1
    assert "no results.json" in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_experiment_runs_shortened(tmp_path):
    """The main job's own config (experiment=quickstart, the embedded corpus, all six encodings),
    with training cut to a few steps so that it fits in CI."""
    run_train(
        [
            "-m",
            "experiment=quickstart",
            "trainer.max_steps=5",
            "trainer.val_check_interval=5",
            "eval.num_tokens=4096",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=tmp_path,
        WANDB_MODE="offline",
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    results = [read_results(p) for p in find_results(sweep)]
    assert sorted(r["run"]["pos_enc"] for r in results) == sorted(
        ["nope", "sinusoidal", "learned", "rope", "rope_pi", "alibi"]
    )
    assert all(r["data"]["corpus"] == "python_stdlib" and r["data"]["python"] for r in results)
    assert (sweep / "report.md").is_file() and (sweep / "extrapolation.png").is_file()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, text_corpus):
    """Lightning DDP (gloo, 2 processes of 4 windows) follows the same trajectory as one process
    with the same global batch of 8 windows: the batches are dealt from one global batch per step.
    Rank 0 alone evaluates and writes results."""
    overrides = [o for o in TINY if not o.startswith(("eval.", "data.batch_size"))]
    common = [
        "trainer.accelerator=cpu",
        "data=text_files",
        f"data.corpus.train={text_corpus}/*.txt",
        *overrides,
        "eval.lengths_x=[1,2]",
        "eval.num_tokens=256",
        "trainer.max_steps=6",
        "trainer.val_check_interval=6",
    ]
    run_train(["trainer=ddp", "data.batch_size=4", *common, f"paths.log_dir={tmp_path / 'ddp'}"], cwd=tmp_path)
    run_train(["data.batch_size=8", *common, f"paths.log_dir={tmp_path / 'one'}"], cwd=tmp_path)
    (ddp,) = [read_results(p) for p in find_results(tmp_path / "ddp")]
    (one,) = [read_results(p) for p in find_results(tmp_path / "one")]
    assert ddp["train"]["steps"] == one["train"]["steps"] == 6
    assert ddp["train"]["tokens"] == one["train"]["tokens"] == 6 * 8 * 16  # steps x global batch x context
    assert ddp["train"]["val_loss"] == pytest.approx(one["train"]["val_loss"], rel=1e-4)
    for a, b in zip(ddp["extrapolation"], one["extrapolation"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    print(f"val loss: 2 processes {ddp['train']['val_loss']:.6f}, one process {one['train']['val_loss']:.6f}")


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["slurm_local", "joblib"])
def test_sweep_through_a_launcher(tmp_path, text_corpus, launcher):
    """The Slurm launcher's code path (submitit's local executor: jobs pickled into their own
    processes) and joblib's parallel jobs: every job writes its results, the report follows."""
    overrides = [o for o in TINY if not o.startswith("logger=")]
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    run_train(
        [
            "-m",
            f"hydra/launcher={launcher}",
            *extra,
            "pos_enc=rope,alibi",
            "data=text_files",
            f"data.corpus.train={text_corpus}/*.txt",
            *overrides,
            "logger=csv",
            "trainer.max_steps=3",
            f"paths.log_dir={tmp_path}",
        ],
        cwd=tmp_path,
    )
    (sweep,) = (tmp_path / "multirun").iterdir()
    results = [read_results(p) for p in find_results(sweep)]
    assert sorted((r["run"]["pos_enc"], r["status"]) for r in results) == [("alibi", "ok"), ("rope", "ok")]
    report = (sweep / "report.md").read_text()
    assert "| alibi |" in report and "| rope |" in report
    print(f"{launcher}: {[p.parent.name for p in find_results(sweep)]}")


@pytest.mark.slow
def test_slurm_launcher_submits_an_array_to_a_stand_in_cluster(tmp_path, text_corpus):
    """hydra/launcher=slurm itself, through submitit's Slurm executor, against tests/fake_slurm.py's
    sbatch / srun / sacct: the config's settings reach the sbatch script, the sweep is one array
    run at most array_parallelism at a time, and every job writes its results, then the report."""
    import fake_slurm

    env = fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    overrides = [o for o in TINY if not o.startswith("logger=")]
    run_train(
        [
            "-m",
            "hydra/launcher=slurm",
            "hydra.launcher.partition=debug",
            "hydra.launcher.timeout_min=30",
            "hydra.launcher.array_parallelism=1",
            "pos_enc=rope,alibi,nope",
            "data=text_files",
            f"data.corpus.train={text_corpus}/*.txt",
            *overrides,
            "logger=csv",
            "trainer.max_steps=3",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        cwd=tmp_path,
        **env,
    )
    (script,) = (tmp_path / "slurm").glob("*.sbatch")
    flags = fake_slurm.sbatch_flags(script.read_text())
    assert flags["partition"] == "debug" and flags["time"] == "30" and flags["array"] == "0-2%1"
    assert flags["gpus-per-node"] == "1" and flags["cpus-per-task"] == "8" and flags["mem"] == "32GB"
    events = (tmp_path / "slurm" / "tasks.log").read_text().split()
    assert events == ["start", "0", "end", "0", "start", "1", "end", "1", "start", "2", "end", "2"]  # %1: one at a time

    (sweep,) = (tmp_path / "logs" / "multirun").iterdir()
    results = [read_results(p) for p in find_results(sweep)]
    assert sorted((r["run"]["pos_enc"], r["status"]) for r in results) == [
        ("alibi", "ok"),
        ("nope", "ok"),
        ("rope", "ok"),
    ]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 3  # submitit's own record, per array task
    report = (sweep / "report.md").read_text()
    assert all(f"| {encoding} |" in report for encoding in ("alibi", "nope", "rope"))
