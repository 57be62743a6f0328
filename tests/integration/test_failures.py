"""No result lost: bad input leaves nothing behind, a failing job costs only itself, divergence is
recorded as such, results.json is strict JSON, and run folders never collide."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ENCODINGS, TINY, run_console, strict_json
from poslab import cli
from poslab.records.results import TRACEBACK_FILENAME, find_results, read_results


def tiny_train_args(corpus: Path, log_dir: Path) -> list[str]:
    return ["data=text_files", f"data.corpus.train={corpus}/*.txt", *TINY, f"paths.log_dir={log_dir}"]


# input -> the one line that must answer it. Each is rejected before training, with exit status 2.
BAD_TRAIN_INPUT = [
    ("model.net.n_head=3", "model.net.n_head=3 must divide model.net.n_embd=32"),
    ("model.net.n_embd=0", "model.net.n_embd must be a positive integer, got 0"),
    ("model.net.n_layer=-1", "model.net.n_layer must be a positive integer, got -1"),
    ("model.net.dropout=1.5", "model.net.dropout must be in [0, 1), got 1.5"),
    ("eval.lengths=[0,16]", "eval.lengths: every eval length must be a positive whole number"),
    ("eval.lengths_x=[-1,1]", "eval.lengths_x: every multiple must be a positive number, got -1"),
    ("data.context=-4", "data.context must be a positive integer, got -4"),
    ("data.batch_size=0", "data.batch_size must be a positive integer, got 0"),
    ("data.context=100000000 eval.lengths=[16]", "data.context=100000000 is longer than the training split"),
    ("eval.protocol=strided", "eval.protocol=strided: allowed: nonoverlapping, sliding"),
    ("eval.protocols=[nonoverlapping,strided]", "eval.protocols: strided unknown; allowed: nonoverlapping, sliding"),
    (
        "eval.protocols=[nonoverlapping,sliding] eval.stride=64",
        "eval.stride=64 is longer than the shortest eval length 16",
    ),
    ("data.passkey_mix=0.5", "data.passkey_mix=0.5 needs data.context >= 32"),
    (
        "eval.passkey.enabled=true",
        "eval.passkey.lengths_x: 1 x data.context=16 must be a whole number of at least 32 tokens",
    ),
    ("eval.num_tokens=20", "eval.num_tokens=20 is shorter than the longest eval length 64"),
    ("eval.batch_tokens=0", "eval.batch_tokens must be a positive integer, got 0"),
    ("data/tokenizer=bpe eval.passkey.enabled=true", "eval.passkey.enabled=true needs the byte tokenizer"),
    (
        "data/tokenizer=bpe data.context=32 eval.lengths=[32] data.passkey_mix=0.5",
        "data.passkey_mix=0.5 needs the byte tokenizer",
    ),
    ("model.net.attention=fast", "model.net.attention=fast: allowed: auto, sdpa, flex, chunked"),
    ("+model.net.attention=sdpa", "+model.net.attention: model.net.attention is a setting already; give"),
    ("pos_encc=rope", "pos_encc: not a setting of poslab-train; did you mean pos_enc"),
    ("trainer.max_step=20", "trainer.max_step: not a setting of poslab-train; did you mean trainer.max_steps"),
    ("data.contxt=64", "data.contxt: not a setting of poslab-train; did you mean data.context"),
    ("model.net.n_layers=2", "model.net.n_layers: not a setting of poslab-train; did you mean model.net.n_layer"),
    (
        "model.nett.n_layer=2",
        "model.nett.n_layer: no setting model.nett in poslab-train's config; did you mean model.net",
    ),
    ("data/tokenizer=bpee", "data/tokenizer=bpee: unknown; available: bpe, bytes, gpt2"),
    ("model.optimizer.lr=-1", "model.optimizer.lr must be a positive number, got -1"),
    ("model.optimizer.betas=[0.9,1.5]", "model.optimizer.betas must be two numbers in [0, 1), got [0.9, 1.5]"),
    ("model.scheduler.min_lr_ratio=2", "model.scheduler.min_lr_ratio must be in [0, 1], got 2"),
    ("ckpt_path=some.ckpt", "ckpt_path is not a poslab-train setting: to continue a killed run use"),
    ("model.compile=maybe", "model.compile=maybe: allowed: auto, true, false"),
    ("pos_enc=learned pos_enc.max_length=8", "data.context=16 cannot be trained with pos_enc: Learned has"),
    ("pos_enc=rope model.net.n_embd=30 model.net.n_head=2", "even head size"),
    ("trainer.max_steps=0", "trainer.max_steps must be a positive integer (0 only with init_from), got 0"),
    ("init_from=missing.ckpt", "init_from=missing.ckpt: no such file"),
    ("experiment=extend_finetune", "experiment=extend_finetune continues a checkpoint: give init_from="),
    ("eval.variants=[rope_pi]", "eval.variants is for poslab-eval"),
    ("trainer.accelerator=tpu", "trainer.accelerator=tpu: allowed: auto, cpu, gpu"),
    ("+ckpt_path=some.ckpt", "to score a checkpoint use poslab-eval ckpt_path="),
    ("+max_step=10", "max_step: not a poslab-train setting; the top-level keys are job_name, seed,"),
    ("data.corpus.train=/nonexistent/*.txt", "data.corpus.train: no file matches"),
    ("pos_enc=rop", "pos_enc=rop: unknown; available: " + ", ".join(ENCODINGS)),
    ("data.positions=randomized data.max_position=8", "data.max_position=8 is below data.context=16"),
    ("data.positions=shuffled", "data.positions=shuffled: allowed: contiguous, randomized"),
    ("pos_enc=irope", "pos_enc.nope_every=4 must be between 1 and model.net.n_layer=1"),
    ("model.net.sink=maybe", "model.net.sink must be true or false, got 'maybe'"),
    ("model.net.attention=flex", "model.net.attention=flex cannot train on a CPU"),
    ("model.net.logit_temperature=logn model.net.temperature_scale=2", "model.net.temperature_scale applies to"),
    ("model.net.logit_temperature=hot", "model.net.logit_temperature=hot: allowed: none, logn, llama4, ssmax"),
    ("model.net.temperature_scale=-1", "model.net.temperature_scale must be a positive number or null, got -1"),
    (
        "pos_enc=cope model.net.attention=flex",
        "model.net.attention=flex cannot serve pos_enc=cope: its bias comes from each row's logits",
    ),
    (
        "data.positions=randomized data.max_position=64 pos_enc=learned pos_enc.max_length=16",
        "data.max_position=64 cannot be trained with pos_enc: Learned has positions 0..15 only",
    ),
]
if not __import__("torch").cuda.is_available():
    BAD_TRAIN_INPUT.append(("trainer.accelerator=gpu", "trainer.accelerator=gpu: no CUDA device here"))


@pytest.mark.parametrize(("bad_input", "message"), BAD_TRAIN_INPUT, ids=[i for i, _ in BAD_TRAIN_INPUT])
def test_bad_input_table(monkeypatch, capfd, tmp_path, text_corpus, bad_input, message):
    """Each bad setting: exit 2, one line naming the key, and no folder written."""
    log_dir = tmp_path / "logs"
    status = run_console(monkeypatch, cli.train_main, *tiny_train_args(text_corpus, log_dir), *bad_input.split())
    out, err = capfd.readouterr()
    assert status == 2
    lines = [line for line in err.splitlines() if message in line]  # on stderr, as the front door's
    assert len(lines) == 1 and lines[0].startswith("poslab-train: error: "), out + err
    assert message not in out
    assert not log_dir.exists() or not any(log_dir.rglob("*")), sorted(log_dir.rglob("*"))


def test_a_job_that_raises_records_its_traceback(monkeypatch, capfd, tmp_path, text_corpus):
    """An exception that is no bad setting: exit 1, results.json says failed with the error in one
    line, and the traceback is in a file in the run folder."""
    extra = tmp_path / "conf" / "pos_enc"
    extra.mkdir(parents=True)
    (extra / "broken.yaml").write_text("_target_: torch.nn.Identity\n")  # not an encoding
    log_dir = tmp_path / "logs"
    args = [f"--config-dir={extra.parent}", "pos_enc=broken", *tiny_train_args(text_corpus, log_dir)]
    assert run_console(monkeypatch, cli.train_main, *args) == 1
    (path,) = find_results(log_dir)
    results = strict_json(path)
    assert results["status"] == "failed" and results["traceback"] == TRACEBACK_FILENAME
    assert results["error"].startswith("AttributeError: 'Identity' object has no attribute")
    assert "\n" not in results["error"]
    traceback_text = (path.parent / TRACEBACK_FILENAME).read_text()
    assert traceback_text.startswith("Traceback (most recent call last)") and "check_length" in traceback_text
    assert results["run"]["pos_enc"] == "broken" and results["config"]["pos_enc"]["_target_"] == "torch.nn.Identity"
    assert "traceback: " in capfd.readouterr().err


def test_divergence_is_recorded_not_scored(monkeypatch, tmp_path, text_corpus):
    log_dir = tmp_path / "logs"
    args = [*tiny_train_args(text_corpus, log_dir), "model.optimizer.lr=1e3", "trainer.max_steps=30"]
    assert run_console(monkeypatch, cli.train_main, *args) == 1
    (path,) = find_results(log_dir)
    results = strict_json(path)
    assert results["status"] == "diverged"
    step = results["train"]["diverged_at_step"]
    assert 1 <= step <= 30 and results["error"] == f"training diverged: the loss is nan at step {step}"
    assert results["extrapolation"] == []  # no row is "ok" with a non-finite number
    assert "NaN" not in path.read_text()


def run_module(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run(
        [sys.executable, "-m", "poslab", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_sweep_survives_its_failing_jobs_and_a_rerun_reuses_the_rest(tmp_path, text_corpus):
    """2 x 2 jobs: n_head=3 is a bad setting (two failed jobs), lr=1e3 diverges, one job is ok.
    Every job runs, every job leaves a strict results.json, the report lists what failed, and the
    sweep exits 1. Rerunning it (resume=SWEEP) keeps the finished job and reruns the rest."""
    log_dir = tmp_path / "logs"
    args = [
        "-m",
        *tiny_train_args(text_corpus, log_dir),
        "model.net.n_head=2,3",
        "model.optimizer.lr=1e-3,1e3",
        "trainer.max_steps=30",
    ]
    out = run_module(args, tmp_path)
    assert out.returncode == 1, out.stdout[-3000:] + out.stderr[-3000:]
    (sweep,) = (log_dir / "multirun").iterdir()
    by_job = {p.parent.name: strict_json(p) for p in find_results(sweep)}
    statuses = {
        job: (r["config"]["model"]["net"]["n_head"], r["config"]["model"]["optimizer"]["lr"], r["status"])
        for job, r in by_job.items()
    }
    assert sorted(statuses.values()) == [
        (2, 0.001, "ok"),
        (2, 1000.0, "diverged"),
        (3, 0.001, "failed"),
        (3, 1000.0, "failed"),
    ]
    for results in by_job.values():
        if results["status"] == "failed":
            assert results["error"] == "ConfigError: model.net.n_head=3 must divide model.net.n_embd=32"
        assert results["status"] != "ok" or all(row["status"] == "ok" for row in results["extrapolation"])
    report = (sweep / "report.md").read_text()
    assert report.count("model.net.n_head=3 must divide") == 2 and "diverged at step" in report
    assert "job(s) of the sweep did not finish ok" in out.stderr

    ok_job = next(job for job, r in by_job.items() if r["status"] == "ok")
    first = (sweep / ok_job / "results.json").read_text()
    rerun = run_module([f"resume={sweep}"], tmp_path)
    assert rerun.returncode == 1, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    again = read_results(sweep / ok_job / "results.json")
    assert len(again["run"]["reused_at"]) == 1
    assert again["extrapolation"] == json.loads(first)["extrapolation"]
    assert "reused" in (sweep / "report.md").read_text()


def test_two_runs_started_in_the_same_second_never_share_a_folder(tmp_path, text_corpus):
    log_dir = tmp_path / "logs"
    base = [*tiny_train_args(text_corpus, log_dir), "trainer.max_steps=3"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    started = time.time()
    jobs = [
        subprocess.Popen(
            [sys.executable, "-m", "poslab", "train", *base, f"seed={seed}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()[-3000:]
    folders = sorted((log_dir / "runs").iterdir())
    assert len(folders) == 2
    names = [f.name.rsplit("_", 1)[0] for f in folders]  # without the random suffix
    for folder in folders:
        results = read_results(folder / "results.json")
        saved_seed = (folder / ".hydra" / "overrides.yaml").read_text()
        assert f"seed={results['run']['seed']}" in saved_seed
        assert (folder / "csv" / "metrics.csv").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
    print(f"run folders {[f.name for f in folders]} (start-second prefix {names}), {time.time() - started:.0f} s")


def test_resume_after_sigkill_ends_with_the_same_numbers(tmp_path, text_corpus):
    """Kill a real training process with SIGKILL once it has checkpointed, resume it from its
    folder, and compare with an uninterrupted run of the same command: bitwise equal on CPU."""
    log_dir = tmp_path / "logs"
    base = [*tiny_train_args(text_corpus, log_dir), "trainer.max_steps=60", "trainer.val_check_interval=10"]
    full = run_module([*base, f"hydra.run.dir={tmp_path / 'uninterrupted'}"], tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    env = {**os.environ, "WANDB_MODE": "disabled"}
    killed = subprocess.Popen(
        [sys.executable, "-m", "poslab", "train", *base],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not list((log_dir / "runs").glob("*/checkpoints/last.ckpt")) and killed.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    killed.kill()
    killed.wait()
    assert killed.returncode == -9, "the run finished before it could be killed"
    (run_dir,) = (log_dir / "runs").iterdir()
    assert not (run_dir / "results.json").exists()

    resumed = run_module([f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = read_results(tmp_path / "uninterrupted" / "results.json")
    b = read_results(run_dir / "results.json")
    step = b["run"]["resumed_from_step"]
    assert step in range(10, 60, 10)
    assert b["train"]["steps"] == a["train"]["steps"] == 60
    assert (b["train"]["train_loss"], b["train"]["val_loss"]) == (a["train"]["train_loss"], a["train"]["val_loss"])
    assert [r["loss"] for r in b["extrapolation"]] == [r["loss"] for r in a["extrapolation"]]
    assert (run_dir / "csv" / "metrics.csv").is_file()  # the killed attempt's metrics are kept
    assert (run_dir / "csv" / f"resumed-from-step-{step}" / "metrics.csv").is_file()
    print(f"killed after step {step}; final train/val loss {b['train']['train_loss']} / {b['train']['val_loss']}")


def test_a_run_killed_while_scoring_resumes_at_its_last_step_with_no_speed(tmp_path, text_corpus):
    """A run killed after its last step but before results.json (while scoring) resumes at that
    step, trains nothing, and scores: it has no training speed of its own, rather than 0 tokens/s."""
    log_dir = tmp_path / "logs"
    trained = run_module([*tiny_train_args(text_corpus, log_dir), "trainer.max_steps=4"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (log_dir / "runs").iterdir()
    first = read_results(run_dir / "results.json")
    assert first["train"]["tokens_per_s"] > 0
    (run_dir / "results.json").unlink()  # as if killed while scoring

    resumed = run_module([f"resume={run_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    again = read_results(run_dir / "results.json")
    assert again["run"]["resumed_from_step"] == again["train"]["steps"] == 4
    assert again["train"]["tokens_per_s"] is None
    assert [r["loss"] for r in again["extrapolation"]] == [r["loss"] for r in first["extrapolation"]]


def test_resume_refuses_other_overrides(monkeypatch, capfd, tmp_path):
    status = run_console(monkeypatch, cli.train_main, f"resume={tmp_path}", "seed=3")
    assert status == 2
    assert "other overrides are not allowed (got: seed=3)" in capfd.readouterr().err
    assert run_console(monkeypatch, cli.train_main, f"resume={tmp_path}") == 2
    assert "not a run or sweep folder" in capfd.readouterr().err
