"""Data parallel training on two CPU processes (gloo) against one process."""

import pytest

from helpers import TINY, run_train
from poslab.records.results import find_results, read_results


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
