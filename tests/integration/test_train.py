"""Training through Hydra's compose API: every encoding end to end, bad input, checkpoints."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from helpers import ENCODINGS, compose_config
from poslab.commands.evaluate import evaluate
from poslab.commands.train import train
from poslab.config.command_line import check_group_overrides
from poslab.errors import ConfigError
from poslab.records.checkpoints import read_checkpoint
from poslab.records.results import read_results
from poslab.training import LitGPT


@pytest.mark.parametrize("pos_enc", ENCODINGS)
def test_fast_dev_run(train_config, pos_enc):
    # the tiny model has 1 layer: irope needs one without RoPE (nope_every at most n_layer)
    layers = ["model.net.n_layer=2", "pos_enc.nope_every=2"] if pos_enc == "irope" else []
    cfg = train_config(f"pos_enc={pos_enc}", "debug=fast_dev_run", *layers)
    results = train(cfg)
    rows = {row["eval_length"]: row for row in results["extrapolation"]}
    assert rows[16]["status"] == "ok" and rows[16]["tokens_scored"] > 0
    if pos_enc == "learned":
        assert rows[32]["status"] == "unsupported" and "max_length=16" in rows[32]["reason"]
    else:
        assert rows[32]["status"] == "ok" and rows[32]["tokens_scored"] == rows[16]["tokens_scored"]
    on_disk = read_results(Path(cfg.paths.output_dir) / "results.json")
    assert on_disk["run"]["pos_enc"] == pos_enc
    assert on_disk["data"]["sha256"] and on_disk["data"]["tokens"]["test"] > 0
    assert on_disk["config"]["pos_enc"]["_target_"].startswith("poslab.encodings.")
    assert on_disk["train"]["steps"] == 1


@pytest.mark.parametrize("pos_enc", ["learned", "rope", "alibi", "sinusoidal"])
def test_randomized_positions_train_and_evaluate_contiguously(train_config, pos_enc):
    cfg = train_config(f"pos_enc={pos_enc}", "data.positions=randomized", "data.max_position=64", "trainer.max_steps=3")
    results = train(cfg)
    assert results["status"] == "ok" and results["train"]["steps"] == 3
    rows = {row["eval_length"]: row["status"] for row in results["extrapolation"]}
    assert rows == {16: "ok", 32: "ok", 64: "ok"}  # learned has a table of max_position=64 vectors
    assert results["config"]["data"]["max_position"] == 64


def test_checkpoint_reloads_under_another_rotary_setting(train_config, tmp_path):
    """last.ckpt is written; poslab-eval scores it under rope_pi, equal to rope within context."""
    cfg = train_config("pos_enc=rope", "trainer.max_steps=5", "trainer.val_check_interval=3")
    trained = train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 5  # the final weights, not step 3
    eval_cfg = compose_config(
        "eval",
        [
            f"ckpt_path={ckpt}",
            "pos_enc=rope_pi",
            "logger=csv",
            "eval.lengths_x=[1,2,4]",
            "eval.num_tokens=256",
            "eval.batch_tokens=256",
        ],
        tmp_path / "eval",
    )
    scored = evaluate(eval_cfg)
    assert scored["run"]["pos_enc"] == "rope_pi" and scored["run"]["trained_as"] == "rope"
    by_length = {r["eval_length"]: r for r in scored["extrapolation"]}
    trained_rows = {r["eval_length"]: r for r in trained["extrapolation"]}
    assert by_length[16]["loss"] == pytest.approx(trained_rows[16]["loss"], rel=1e-6)  # scale 1 in context
    # past it, the loaded model runs PI: at 64 = 4x the context every frequency is divided by 4
    lit, _ = LitGPT.from_checkpoint(read_checkpoint(ckpt), eval_cfg.pos_enc)
    head_dim = 32 // 2
    by_hand = torch.tensor([10000.0 ** (-2 * i / head_dim) / 4 for i in range(head_dim // 2)])
    torch.testing.assert_close(lit.model.pos_enc.frequencies(64)[0], by_hand)


def test_unknown_pos_enc_lists_the_available_ones():
    with pytest.raises(ConfigError) as error:
        check_group_overrides(["pos_enc=rop"])
    message = str(error.value)
    assert "pos_enc=rop" in message and "\n" not in message
    for name in ENCODINGS:
        assert name in message
    check_group_overrides(["pos_enc=rope,alibi", "pos_enc=glob(*)", "model.net.n_head=3", "seed=1"])


def test_group_check_follows_added_config_folders(tmp_path):
    (tmp_path / "pos_enc").mkdir()
    (tmp_path / "pos_enc" / "mine.yaml").write_text("_target_: poslab.encodings.NoPE\n")
    check_group_overrides(["--config-dir", str(tmp_path), "pos_enc=mine"])
    check_group_overrides([f"--config-dir={tmp_path}", "pos_enc=mine,rope"])
    with pytest.raises(ConfigError, match="available: .*learned, mine, nope"):
        check_group_overrides(["-cd", str(tmp_path), "pos_enc=yours"])


def test_a_launcher_without_its_plugin_says_what_to_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    check_group_overrides(["-m", "hydra/launcher=slurm", "hydra/launcher=joblib"])  # the dev extra has both

    def without_plugins(name, *args):
        return None if name.startswith("hydra_plugins.") else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_plugins)
    for launcher, package, extra in [
        ("slurm", "hydra-submitit-launcher", "slurm"),
        ("slurm_local", "hydra-submitit-launcher", "slurm"),
        ("joblib", "hydra-joblib-launcher", "launchers"),
    ]:
        with pytest.raises(ConfigError) as error:
            check_group_overrides(["-m", f"hydra/launcher={launcher}", "pos_enc=rope"])
        assert str(error.value) == f"hydra/launcher={launcher} needs the {package} plugin: pip install -e '.[{extra}]'"
    check_group_overrides(["-m", "hydra/launcher=basic", "pos_enc=rope"])  # Hydra's own


def test_unknown_pos_enc_on_the_command_line(tmp_path):
    out = subprocess.run(
        [Path(sys.executable).parent / "poslab-train", "pos_enc=rop", f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert f"pos_enc=rop: unknown; available: {', '.join(ENCODINGS)}" in out.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_previous_results_survive_a_failed_run(train_config):
    cfg = train_config("pos_enc=alibi", "debug=fast_dev_run")
    train(cfg)
    results = Path(cfg.paths.output_dir) / "results.json"
    before = results.read_text()
    with open_dict(cfg):
        cfg.model.net.n_head = 5
    with pytest.raises(ConfigError):
        train(cfg)
    assert results.read_text() == before
    assert json.loads(before)["run"]["pos_enc"] == "alibi"


def test_wandb_offline_run_is_written(train_config, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = train_config("pos_enc=alibi", "debug=fast_dev_run", "logger=wandb")
    with open_dict(cfg):
        cfg.logger.wandb.mode = "offline"
    train(cfg)
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
    import wandb

    assert wandb.run is None  # finished after the job
    os.environ.pop("WANDB_RUN_ID", None)
