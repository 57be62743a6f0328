"""The console scripts as a user types them: poslab-eval's checks and folders, wandb that never
costs a run, the README's commands pasted into a shell, `python -m poslab train`."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPOSITORY, SCRIPTS, TINY, run_console, train_tiny_run
from poslab import cli
from poslab.commands.train import train
from poslab.records.results import find_results, read_results

README = REPOSITORY / "README.md"
EVAL_TINY = ["logger=csv", "eval.lengths_x=[1,2]", "eval.num_tokens=256", "eval.batch_tokens=256"]


@pytest.fixture(scope="module")
def rope_checkpoint(tmp_path_factory):
    """A RoPE run trained with seed 2, in a run folder as poslab-train leaves it."""
    return train_tiny_run(tmp_path_factory.mktemp("ckpt"), "2026-01-01_00-00-00_rope_abc123", "seed=2")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "ckpt_path is required: poslab-eval ckpt_path="),
        (["ckpt_path=missing.ckpt"], "ckpt_path=missing.ckpt: no such file"),
    ],
)
def test_eval_without_a_checkpoint(monkeypatch, capfd, tmp_path, args, message):
    assert run_console(monkeypatch, cli.eval_main, *args, f"paths.log_dir={tmp_path}") == 2
    assert message in capfd.readouterr().err
    assert not any(tmp_path.iterdir())


def test_eval_of_a_file_that_is_not_a_checkpoint(monkeypatch, capfd, tmp_path):
    status = run_console(monkeypatch, cli.eval_main, f"ckpt_path={README}", f"paths.log_dir={tmp_path}", *EVAL_TINY)
    out, err = capfd.readouterr()
    assert status == 2
    assert f"ckpt_path={README}: not a poslab checkpoint (torch.load failed: UnpicklingError)" in out + err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("other_family", ["alibi", "nope", "sinusoidal"])
def test_eval_refuses_another_family(monkeypatch, capfd, tmp_path, rope_checkpoint, other_family):
    args = [f"ckpt_path={rope_checkpoint}", f"pos_enc={other_family}", f"paths.log_dir={tmp_path}", *EVAL_TINY]
    assert run_console(monkeypatch, cli.eval_main, *args) == 2
    out, err = capfd.readouterr()
    line = next(line for line in (out + err).splitlines() if "cannot be scored under" in line)
    assert "the checkpoint was trained with rope (rotary family)" in line
    allowed = line.split("allowed: ")[1].split(", ")
    assert {"rope", "rope_pi"} <= set(allowed) and other_family not in allowed
    assert not any(tmp_path.iterdir())


USER_ENCODINGS = """
import torch
from torch import nn

from poslab.encodings import PositionalEncoding


class LinearDistance(PositionalEncoding):
    \"\"\"-w_h |i - j|, one learned weight per head; names no family.\"\"\"

    def __init__(self, n_head):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_head,), 0.1))

    def bias(self, q_pos, k_pos):
        distance = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().float()
        return -self.weight.view(-1, 1, 1) * distance.unsqueeze(-3)


class LogDistance(PositionalEncoding):
    \"\"\"-w_h log(1 + |i - j|): the same parameter, another meaning; names no family either.\"\"\"

    def __init__(self, n_head):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n_head,), 0.1))

    def bias(self, q_pos, k_pos):
        distance = (q_pos.unsqueeze(-1) - k_pos.unsqueeze(-2)).abs().float()
        return -self.weight.view(-1, 1, 1) * torch.log1p(distance).unsqueeze(-3)
"""


def test_user_encodings_without_a_family_are_each_their_own(tmp_path):
    """Two encodings of a user's own, neither naming a family, with the same parameters: a
    checkpoint of one is refused under the other (its weights would load and mean something
    else), and scored under itself."""
    (tmp_path / "my_encodings.py").write_text(USER_ENCODINGS)
    conf = tmp_path / "my_conf" / "pos_enc"
    conf.mkdir(parents=True)
    for name, cls in (("linear_distance", "LinearDistance"), ("log_distance", "LogDistance")):
        (conf / f"{name}.yaml").write_text(f"_target_: my_encodings.{cls}\nn_head: ${{model.net.n_head}}\n")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(tmp_path)}
    config_dir = f"--config-dir={tmp_path / 'my_conf'}"
    ckpt = train_tiny_run(tmp_path, "linear", config_dir, "pos_enc=linear_distance", env=env)

    def evaluate(pos_enc: str) -> subprocess.CompletedProcess:
        args = [f"ckpt_path={ckpt}", f"pos_enc={pos_enc}", f"paths.log_dir={tmp_path / pos_enc}", *EVAL_TINY]
        return subprocess.run(
            [str(SCRIPTS / "poslab-eval"), config_dir, *args], env=env, capture_output=True, text=True, timeout=300
        )

    refused = evaluate("log_distance")
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert (
        "the checkpoint was trained with linear_distance (my_encodings.LinearDistance family) and cannot be scored "
        "under a my_encodings.LogDistance encoding; allowed: linear_distance" in refused.stdout + refused.stderr
    )
    assert not (tmp_path / "log_distance").exists()
    accepted = evaluate("linear_distance")
    assert accepted.returncode == 0, accepted.stdout[-2000:] + accepted.stderr[-2000:]
    (results,) = find_results(tmp_path / "linear_distance")
    assert read_results(results)["status"] == "ok"


def test_eval_folder_name_and_seed_come_from_the_checkpoint(monkeypatch, tmp_path, rope_checkpoint):
    args = [f"ckpt_path={rope_checkpoint}", "pos_enc=rope_pi", f"paths.log_dir={tmp_path}", *EVAL_TINY]
    assert run_console(monkeypatch, cli.eval_main, *args) == 0
    (folder,) = (tmp_path / "eval").iterdir()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_2026-01-01_00-00-00_rope_abc123_rope_pi_[0-9a-f]{6}", folder.name
    )
    results = read_results(folder / "results.json")
    assert results["run"]["name"] == "rope_pi-s2" and results["run"]["seed"] == 2
    assert results["run"]["variant"] == "rope_pi" and results["run"]["trained_as"] == "rope"
    assert results["run"]["checkpoint_run"] == "2026-01-01_00-00-00_rope_abc123"
    # without pos_enc the folder is named after the checkpoint's own encoding, not "None"
    args = [f"ckpt_path={rope_checkpoint}", f"paths.log_dir={tmp_path / 'plain'}", *EVAL_TINY]
    assert run_console(monkeypatch, cli.eval_main, *args) == 0
    (folder,) = (tmp_path / "plain" / "eval").iterdir()
    assert re.fullmatch(r".*_2026-01-01_00-00-00_rope_abc123_rope_[0-9a-f]{6}", folder.name)


def test_naming_the_checkpoints_own_encoding_keeps_its_trained_settings(monkeypatch, tmp_path):
    """pos_enc=NAME (or eval.variants, or inspect's variant=) with the name the run was trained
    under scores it as trained: irope keeps its nope_every, cope its table size, where the shipped
    YAML says otherwise."""
    root = tmp_path / "train"
    irope = train_tiny_run(root, "irope_run", "pos_enc=irope", "model.net.n_layer=2", "pos_enc.nope_every=2")
    cope = train_tiny_run(root, "cope_run", "pos_enc=cope", "pos_enc.max_position=8")
    for checkpoint, name, key, value in ((irope, "irope", "nope_every", 2), (cope, "cope", "max_position", 8)):
        for asked in (f"pos_enc={name}", f"eval.variants=[{name}]"):
            log_dir = tmp_path / "eval" / f"{name}_{asked.split('=')[0]}"
            args = [f"ckpt_path={checkpoint}", asked, f"paths.log_dir={log_dir}", *EVAL_TINY]
            assert run_console(monkeypatch, cli.eval_main, *args) == 0, asked
            (results,) = find_results(log_dir)
            scored = read_results(results)
            assert scored["status"] == "ok" and scored["config"]["pos_enc"][key] == value, asked


@pytest.mark.parametrize("credentials", ["no key", "key but no network"])
def test_wandb_online_falls_back_to_offline(train_config, monkeypatch, tmp_path, caplog, credentials):
    """WANDB_MODE=online without a key, or with a key and no route to the server: one warning,
    then the run logs offline and finishes."""
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    if credentials == "key but no network":
        monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
        monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    cfg = train_config("pos_enc=alibi", "debug=fast_dev_run", "logger=wandb")
    started = time.perf_counter()
    results = train(cfg)
    elapsed = time.perf_counter() - started
    assert results["status"] == "ok"
    warnings = [r.getMessage() for r in caplog.records if "cannot log online" in r.getMessage()]
    assert len(warnings) == 1
    assert ("no API key" in warnings[0]) == (credentials == "no key")
    assert len(list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))) == 1
    print(f"{credentials}: run finished offline in {elapsed:.1f} s")


def readme_command(prefix: str) -> str:
    """The first command in README.md that starts with `prefix`, exactly as written there."""
    commands = re.findall(r"`(poslab-[^`]+)`", README.read_text())
    return next(c for c in commands if c.startswith(prefix))


def test_readme_text_files_command_works_when_pasted(tmp_path, text_corpus):
    """Pasted into bash as written (with $HOME pointing at a folder holding ~/corpus), plus
    settings that make it short."""
    command = readme_command("poslab-train data=text_files")
    home = tmp_path / "home"
    home.mkdir()
    text_corpus.rename(home / "corpus")
    (home / "corpus" / "nested").mkdir()
    (home / "corpus" / "doc_00.txt").rename(home / "corpus" / "nested" / "doc_00.txt")  # ** reaches it
    tiny = " ".join(f"'{o}'" for o in [*TINY, "trainer.max_steps=2", f"paths.log_dir={tmp_path / 'logs'}"])
    env = {
        **os.environ,
        "HOME": str(home),
        "WANDB_MODE": "disabled",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    out = subprocess.run(["bash", "-c", f"{command} {tiny}"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    (path,) = find_results(tmp_path / "logs")
    results = read_results(path)
    assert results["data"]["corpus"] == "text_files" and "nested/doc_00.txt" in str(results["data"]["files"])


def test_python_dash_m_poslab_runs_the_console_scripts(tmp_path):
    """`python -m poslab train ...` is poslab-train (its checks, its exit status); without a
    command it says which there are."""
    bad = [sys.executable, "-m", "poslab", "train", "trainer.max_steps=0", f"paths.log_dir={tmp_path}"]
    out = subprocess.run(bad, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "trainer.max_steps must be a positive integer (0 only with init_from), got 0" in out.stdout + out.stderr
    assert not (tmp_path / "runs").exists()
    usage = subprocess.run([sys.executable, "-m", "poslab"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "python -m poslab {train,eval,inspect,report}" in usage.stderr


def test_one_checkpoint_under_several_variants(monkeypatch, capfd, tmp_path, rope_checkpoint):
    """eval.variants scores one checkpoint under each rotary setting in one command; a variant
    of another family is refused before anything is scored."""
    args = [f"ckpt_path={rope_checkpoint}", f"paths.log_dir={tmp_path / 'bad'}", *EVAL_TINY]
    assert run_console(monkeypatch, cli.eval_main, *args, "eval.variants=[rope,rope_pi,alibi]") == 2
    said = "eval.variants=alibi: the checkpoint was trained with rope (rotary family)"
    assert said in "".join(capfd.readouterr())
    assert not (tmp_path / "bad").exists()

    variants = ["rope", "rope_pi", "rope_ntk", "rope_yarn", "rope_llama3"]
    args = [f"ckpt_path={rope_checkpoint}", f"paths.log_dir={tmp_path}", *EVAL_TINY, "eval.lengths_x=[1,4]"]
    assert run_console(monkeypatch, cli.eval_main, *args, f"eval.variants=[{','.join(variants)}]") == 0
    (path,) = find_results(tmp_path)
    results = read_results(path)
    assert results["run"]["variants"] == variants and results["run"]["trained_as"] == "rope"
    # its folder names every variant, as poslab-inspect's does
    assert path.parent.name.split("_rope_abc123_")[1].startswith("rope+rope_pi+rope_ntk+rope_yarn+rope_llama3_")
    for variant in variants:  # each variant keeps its own CSV log
        assert (path.parent / "csv" / variant / "hparams.yaml").is_file()
    loss = {(row["variant"], row["eval_length"]): row["loss"] for row in results["extrapolation"]}
    assert sorted(loss) == sorted((v, n) for v in variants for n in (16, 64))
    for variant in variants[1:]:  # within the training context every scaling member is plain RoPE
        assert loss[variant, 16] == pytest.approx(loss["rope", 16], rel=1e-6)
    from poslab.report import write_report

    report = write_report(tmp_path).path.read_text()
    for variant in variants:
        assert f"| {variant} on rope checkpoint (2026-01-01_00-00-00_rope_abc123) |" in report


def test_extend_finetune_from_a_checkpoint(tmp_path, text_corpus):
    """experiment=extend_finetune: four jobs at 4x the checkpoint's context, from its weights.
    Zero-shot plain RoPE is the checkpoint itself (the same numbers as its own run, scored on
    the same tokens); PI runs at the fixed factor 4 measured against the original context."""
    model = ["model.net.n_layer=1", "model.net.n_head=2", "model.net.n_embd=32"]
    data = ["data=text_files", f"data.corpus.train={text_corpus}/*.txt"]
    evaluation = ["eval.lengths=[16,32,64]", "eval.num_tokens=512", "logger=csv"]
    env = {**os.environ, "WANDB_MODE": "disabled"}

    def poslab_train(*args):
        out = subprocess.run(
            [sys.executable, "-m", "poslab", "train", *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    base = tmp_path / "base"
    poslab_train(*data, *model, *evaluation, "data.context=16", "trainer.max_steps=20", f"hydra.run.dir={base}")
    ckpt = base / "checkpoints" / "last.ckpt"
    sweep = poslab_train(
        "experiment=extend_finetune",
        f"init_from={ckpt}",
        *data,
        *model,
        *evaluation,
        "trainer.max_steps=0,4",
        "trainer.val_check_interval=4",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    jobs = {(r["run"]["pos_enc"], r["train"]["steps"]): r for r in map(read_results, find_results(tmp_path / "logs"))}
    assert sorted(jobs) == [("rope", 0), ("rope", 4), ("rope_pi", 0), ("rope_pi", 4)]
    for results in jobs.values():
        assert results["config"]["data"]["context"] == 64 and results["config"]["original_context"] == 16
    pi = jobs["rope_pi", 4]["config"]["pos_enc"]
    assert pi["factor"] == 4 and pi["train_length"] == 16
    assert jobs["rope", 0]["train"]["zero_shot"] and jobs["rope", 0]["train"]["train_context"] == 16
    own = read_results(base / "results.json")
    assert [r["loss"] for r in jobs["rope", 0]["extrapolation"]] == [r["loss"] for r in own["extrapolation"]]
    report = next((tmp_path / "logs" / "multirun").iterdir()) / "report.md"
    assert "| rope (trainer.max_steps=0) |" in report.read_text()
    # the log says of a zero-shot job what its table does: trained at 16
    assert re.search(r"rope: \d+ parameters, trained at 16, scored as it is \(zero-shot\)", sweep.stdout)
    assert re.search(r"rope: \d+ parameters, training context 64", sweep.stdout)


def test_the_readme_worked_example_of_a_new_encoding(monkeypatch, tmp_path, text_corpus):
    """The class and YAML of README's "Adding an encoding", as written there, train and score."""
    text = README.read_text()
    section = text[text.index("## Adding an encoding") : text.index("## Development")]
    python_block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    yaml_block = re.findall(r"```yaml\n(.*?)```", section, re.S)[1]
    (tmp_path / "my_encodings.py").write_text(
        "import torch\nfrom torch import nn\n\nfrom poslab.encodings.base import PositionalEncoding\n\n\n"
        + python_block
    )
    conf = tmp_path / "my_conf" / "pos_enc"
    conf.mkdir(parents=True)
    (conf / "log_distance.yaml").write_text(
        yaml_block.replace("poslab.encodings.bias.LogDistanceBias", "my_encodings.LogDistanceBias")
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    args = [f"--config-dir={conf.parent}", "pos_enc=log_distance", "data=text_files"]
    args += [f"data.corpus.train={text_corpus}/*.txt", *TINY, "trainer.max_steps=3", f"paths.log_dir={tmp_path}"]
    assert run_console(monkeypatch, cli.train_main, *args) == 0
    (path,) = find_results(tmp_path)
    results = read_results(path)
    assert results["run"]["pos_enc"] == "log_distance" and results["status"] == "ok"
    assert [row["status"] for row in results["extrapolation"]] == ["ok", "ok", "ok"]
