"""Sweeps through Hydra's launchers: submitit's local executor, joblib, and the Slurm launcher
itself against a stand-in cluster (fake_slurm.py)."""

import pytest

from helpers import TINY, run_train
from poslab.records.results import find_results, read_results


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
    """hydra/launcher=slurm itself, through submitit's Slurm executor, against tests/e2e/fake_slurm.py's
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
