"""A refusal never writes: a command refused (another command's run or sweep folder, a damaged
checkpoint, a log folder that cannot be written) leaves every file as it was, byte for byte, and
a fault mid-run (a full disk, Ctrl-C) leaves the last good checkpoint, no temporary file, and one
line that says what happened."""

import errno
import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import SCRIPTS, TINY, run_console, train_tiny_run
from poslab import cli
from poslab.config import CONFIG_DIR
from poslab.records.checkpoints import AtomicCheckpointIO
from poslab.records.results import build_results, find_results, read_results, record_failure, write_results


def tiny_args(corpus: Path, *extra: str) -> list[str]:
    return ["data=text_files", f"data.corpus.train={corpus}/*.txt", *TINY, "trainer.max_steps=3", *extra]


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file under `folder` and the sha256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def one_error_line(err: str, prog: str = "poslab-train") -> str:
    lines = [line for line in err.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def test_a_sweep_into_a_finished_sweeps_folder_with_other_settings_changes_nothing(
    monkeypatch, capfd, tmp_path, text_corpus
):
    sweep = tmp_path / "sweep"
    args = ["-m", f"hydra.sweep.dir={sweep}", "pos_enc=rope,alibi", *tiny_args(text_corpus)]
    assert run_console(monkeypatch, cli.train_main, *args) == 0
    before = fingerprint(sweep)
    assert {"multirun.yaml", "0_rope_s0/results.json", "1_alibi_s0/.hydra/overrides.yaml"} <= set(before)
    capfd.readouterr()

    other = ["-m", f"hydra.sweep.dir={sweep}", "pos_enc=rope,alibi", *tiny_args(text_corpus, "trainer.max_steps=4")]
    assert run_console(monkeypatch, cli.train_main, *other) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"hydra.sweep.dir={sweep} holds the work of another command" in line and f"resume={sweep}" in line
    assert fingerprint(sweep) == before

    # the same command again continues it (as resume= does): the finished jobs are reused
    assert run_console(monkeypatch, cli.train_main, *args) == 0
    assert {read_results(p)["status"] for p in find_results(sweep)} == {"ok"}


def test_a_run_into_a_finished_runs_folder_with_other_settings_changes_nothing(
    monkeypatch, capfd, tmp_path, text_corpus
):
    run = tmp_path / "run"
    args = [f"hydra.run.dir={run}", *tiny_args(text_corpus)]
    assert run_console(monkeypatch, cli.train_main, *args) == 0
    before = fingerprint(run)
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "results.json"} <= set(before)
    capfd.readouterr()
    assert run_console(monkeypatch, cli.train_main, *args, "model.net.n_layer=2") == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"hydra.run.dir={run} holds the work of another command" in line
    assert fingerprint(run) == before
    assert run_console(monkeypatch, cli.train_main, f"resume={run}") == 0  # its own folder still resumes
    assert read_results(run / "results.json")["run"]["reused_at"]


def test_a_job_refused_in_a_folder_with_a_finished_run_keeps_it(tmp_path, capsys):
    """Inside a sweep (e.g. resumed after the code changed a default), a job whose folder holds a
    finished run of another config is refused without replacing that run's results.json; the
    refusal is a line beside it, which the sweep's report lists."""
    from omegaconf import OmegaConf

    from poslab.errors import ConfigError
    from poslab.report import write_report

    job = tmp_path / "0_rope_s0"
    finished = build_results(
        run={"name": "rope-s0", "pos_enc": "rope", "job": "train"}, config={}, data=None, train={}, extrapolation=[]
    )
    path = write_results(finished, job)
    before = path.read_bytes()
    error = ConfigError("holds a finished run with another config")
    refusal = record_failure(OmegaConf.create({"seed": 0}), job, error, job="train")
    assert path.read_bytes() == before and sorted(p.name for p in job.iterdir()) == ["refused.txt", "results.json"]
    assert refusal == job / "refused.txt"
    assert "kept the finished run's results.json; this job: holds a finished run" in capsys.readouterr().err
    problems = write_report(tmp_path).problems
    assert problems == ["0_rope_s0: refused (the finished run in it is kept): holds a finished run with another config"]


def test_a_full_disk_leaves_the_last_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)
    before = target.read_bytes()

    def no_space(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OSError, match="No space left"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_recording_a_failure_on_a_full_disk_says_it_in_one_line(tmp_path, monkeypatch, capsys):
    from pathlib import Path as PathType

    from omegaconf import OmegaConf

    def no_space(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PathType, "write_text", no_space)
    error = RuntimeError("disk full while training")
    assert record_failure(OmegaConf.create({"seed": 0}), tmp_path / "job", error, job="train") is None
    err = capsys.readouterr().err.strip().splitlines()
    said = "could not record the failure (No space left on device): RuntimeError: disk full while training"
    assert err == [f"{tmp_path / 'job'}: {said}"]
    assert not [p for p in (tmp_path / "job").iterdir() if p.name.endswith(".tmp")]


def test_a_text_file_or_a_damaged_checkpoint_as_init_from_is_one_line(monkeypatch, capfd, tmp_path, text_corpus):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    ckpt = train_tiny_run(tmp_path / "trained", "run")
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for path in (text, damaged):
        log_dir = tmp_path / f"logs_{path.stem}"
        args = [*tiny_args(text_corpus, f"init_from={path}"), f"paths.log_dir={log_dir}"]
        assert run_console(monkeypatch, cli.train_main, *args) == 2
        line = one_error_line(capfd.readouterr().err)
        assert f"init_from={path}: not a poslab checkpoint (torch.load failed:" in line
        assert not log_dir.exists()


def test_resume_with_a_damaged_checkpoint_says_what_to_do(monkeypatch, capfd, tmp_path, text_corpus):
    ckpt = train_tiny_run(tmp_path, "run", "trainer.max_steps=4", "trainer.val_check_interval=2")
    run = ckpt.parent.parent
    (run / "results.json").unlink()  # killed before it finished: the checkpoint is what resumes
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = fingerprint(run)
    assert run_console(monkeypatch, cli.train_main, f"resume={run}") == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"{ckpt} is damaged (torch.load failed:" in line and "delete it to train this job from the start" in line
    assert fingerprint(run) == before  # said before Hydra starts: not even its log is touched


def test_a_log_folder_that_cannot_be_written_is_one_line(monkeypatch, capfd, tmp_path, text_corpus):
    blocked = tmp_path / "read_only"
    blocked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if Path(path) == blocked else real_access(path, mode))
    args = [*tiny_args(text_corpus), f"paths.log_dir={blocked / 'outputs'}"]
    assert run_console(monkeypatch, cli.train_main, *args) == 2
    line = one_error_line(capfd.readouterr().err)
    assert f"paths.log_dir={blocked / 'outputs'}: {blocked} cannot be written" in line
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert run_console(monkeypatch, cli.train_main, *tiny_args(text_corpus), f"paths.log_dir={a_file / 'x'}") == 2
    assert f"{a_file} is a file, not a folder" in one_error_line(capfd.readouterr().err)


def test_an_encoding_class_that_cannot_be_imported_is_one_line(monkeypatch, capfd, tmp_path, text_corpus):
    conf = tmp_path / "my_conf" / "pos_enc"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("_target_: myenc.DoesNotExist\n")
    log_dir = tmp_path / "logs"
    args = [f"--config-dir={conf.parent}", "pos_enc=mine", *tiny_args(text_corpus), f"paths.log_dir={log_dir}"]
    started = time.perf_counter()
    assert run_console(monkeypatch, cli.train_main, *args) == 2
    line = one_error_line(capfd.readouterr().err)
    assert "pos_enc._target_=myenc.DoesNotExist cannot be imported (" in line
    assert not log_dir.exists() or not any(log_dir.rglob("*"))
    print(f"answered in {time.perf_counter() - started:.1f} s")


def test_the_documented_attention_setting_is_a_setting(monkeypatch, tmp_path, text_corpus):
    log_dir = tmp_path / "logs"
    args = [*tiny_args(text_corpus, "pos_enc=alibi", "model.net.attention=chunked"), f"paths.log_dir={log_dir}"]
    assert run_console(monkeypatch, cli.train_main, *args) == 0
    (path,) = find_results(log_dir)
    assert read_results(path)["config"]["model"]["net"]["attention"] == "chunked"


def test_poslab_eval_help_is_help(tmp_path):
    out = subprocess.run([SCRIPTS / "poslab-eval", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ckpt_path" in out.stdout and "error" not in out.stderr


def with_ctrl_c() -> None:
    """SIGINT as a terminal delivers it: a shell starts background jobs with SIGINT ignored, and a
    child inherits that, so a test run from such a job would send a Ctrl-C no one receives."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_which_step_the_checkpoint_holds_and_how_to_resume(tmp_path, text_corpus):
    run = tmp_path / "run"
    args = [*tiny_args(text_corpus), "trainer.max_steps=100000", "trainer.val_check_interval=5", f"hydra.run.dir={run}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    process = subprocess.Popen(
        [SCRIPTS / "poslab-train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=with_ctrl_c,
    )
    deadline = time.time() + 240
    while not (run / "checkpoints" / "last.ckpt").is_file() and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode != 0
    line = one_error_line(err)
    assert "interrupted at step" in line and "checkpoints/last.ckpt holds step" in line
    assert line.endswith(f"continue with: poslab-train resume={run}")
    assert not list(run.rglob("*.tmp"))


def test_ctrl_c_while_a_checkpoint_is_written_is_reported_as_an_interrupt(monkeypatch, capfd, tmp_path, text_corpus):
    """A Ctrl-C that lands inside torch.save comes out of its C++ writer as a RuntimeError ("unexpected
    pos"), not KeyboardInterrupt: the run still says it was interrupted, and the checkpoint before
    is kept. The signal is sent from inside the second save, the way the C++ writer turns it."""
    run = tmp_path / "run"
    save = AtomicCheckpointIO.save_checkpoint
    saves = []
    handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see with_ctrl_c)

    def interrupted_save(self, checkpoint, path, storage_options=None):
        saves.append(path)
        if len(saves) < 2:
            return save(self, checkpoint, path, storage_options)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0") from None

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", interrupted_save)
    args = tiny_args(text_corpus, "trainer.max_steps=100", "trainer.val_check_interval=2", f"hydra.run.dir={run}")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    try:
        assert run_console(monkeypatch, cli.train_main, *args) != 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back
    finally:
        signal.signal(signal.SIGINT, handler)
    line = one_error_line(capfd.readouterr().err)
    assert "interrupted at step" in line and "checkpoints/last.ckpt holds step 2" in line, line
    assert line.endswith(f"continue with: poslab-train resume={run}")


def test_resume_needs_a_folder(monkeypatch, capfd):
    for bare in ("resume", "resume="):
        assert run_console(monkeypatch, cli.train_main, bare) == 2
        assert "needs a folder: poslab-train resume=outputs/runs/<run>" in one_error_line(capfd.readouterr().err)


def test_resume_replays_the_config_folders_and_hydras_own_overrides(monkeypatch, tmp_path, text_corpus):
    """A run launched with --config-dir (its own encoding) and a Hydra override resumes with both:
    without the config folder, pos_enc=mine would not even compose."""
    conf = tmp_path / "my_conf" / "pos_enc"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text((Path(CONFIG_DIR) / "pos_enc" / "rope.yaml").read_text())
    ckpt = train_tiny_run(
        tmp_path, "run", f"--config-dir={conf.parent}", "pos_enc=mine", "hydra/launcher=basic", "trainer.max_steps=4"
    )
    run = ckpt.parent.parent
    (run / "results.json").unlink()  # killed before it finished: the checkpoint is what resumes
    argv = cli.resume_command_line("poslab-train", [f"resume={run}"])
    assert argv[0] == f"--config-dir={conf.parent}"
    assert "hydra/launcher=basic" in argv and "hydra.mode=RUN" in argv and "pos_enc=mine" in argv
    assert run_console(monkeypatch, cli.train_main, f"resume={run}") == 0
    results = read_results(run / "results.json")
    assert results["status"] == "ok" and results["run"]["pos_enc"] == "mine"
    assert results["run"]["resumed_from_step"] == 4
