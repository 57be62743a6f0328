"""The main job's own config, shortened: experiment=quickstart on the embedded corpus."""

import pytest

from helpers import run_train
from poslab.records.results import find_results, read_results


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
