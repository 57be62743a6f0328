import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from poslab.config import CONFIG_DIR

# Tests never wait on the network or write into the user's wandb/HF folders.
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

ENCODINGS = sorted(p.stem for p in (Path(CONFIG_DIR) / "pos_enc").glob("*.yaml"))

TINY = [
    "model.net.n_layer=1",
    "model.net.n_head=2",
    "model.net.n_embd=32",
    "data.context=16",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "data.val_tokens=256",
    "eval.lengths_x=[1,2,4]",
    "eval.num_tokens=256",
    "eval.batch_tokens=256",
    "logger=csv",
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_caches(tmp_path_factory):
    os.environ["POSLAB_DATA_CACHE"] = str(tmp_path_factory.mktemp("hf_cache"))
    yield


@pytest.fixture
def text_corpus(tmp_path) -> Path:
    """A small corpus of real text files, enough for tiny models: 30 documents."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    source = Path(__file__).read_text() + Path(CONFIG_DIR, "train.yaml").read_text()
    for i in range(30):
        (folder / f"doc_{i:02d}.txt").write_text(f"# document {i}\n" + source * (1 + i % 3))
    return folder


def compose_config(config_name: str, overrides: list[str], output_dir: Path):
    """A config composed as the command line would, with Hydra's runtime set (as in a real run)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture
def train_config(tmp_path, text_corpus):
    def make(*overrides: str):
        base = ["data=text_files", f"data.corpus.train={text_corpus}/*.txt", *TINY]
        return compose_config("train", [*base, *overrides], tmp_path / "run")

    return make


def train_tiny_run(root: Path, run_name: str, *overrides: str) -> Path:
    """Train a tiny RoPE model through `python -m poslab.train` into root/runs/run_name, as
    poslab-train leaves a run folder; returns its last.ckpt."""
    corpus = root / "corpus"
    corpus.mkdir()
    text = Path(__file__).read_text()
    for i in range(30):
        (corpus / f"doc_{i:02d}.txt").write_text(f"# {i}\n" + text * (1 + i % 3))
    args = ["data=text_files", f"data.corpus.train={corpus}/*.txt", *TINY, "trainer.max_steps=3", *overrides]
    run_dir = root / "runs" / run_name
    out = subprocess.run(
        [sys.executable, "-m", "poslab.train", *args, f"hydra.run.dir={run_dir}"],
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"
