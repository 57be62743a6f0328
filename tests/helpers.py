"""What several tests share: the tiny sizes, composing a config as the command line would, a small
text corpus, a tiny trained run, a model with uniform logits, running a console script in-process,
strict JSON reading, and the keys an offline wandb run recorded. Tests import it (`from helpers
import ...`; tests/ is on pytest's path)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from torch.utils._python_dispatch import TorchDispatchMode

from poslab.config import CONFIG_DIR, available
from poslab.config.resolvers import register_resolvers
from poslab.encodings import NoPE

register_resolvers()

ENCODINGS = available("pos_enc")

# A model and data small enough that a training run takes a second or two
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

# A task run (task=NAME) as small: a tiny model, three steps, short training lengths
TINY_TASK = [
    "model.net.n_layer=1",
    "model.net.n_head=2",
    "model.net.n_embd=32",
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "task.train_lengths=[1,4]",
    "task.examples_per_length=8",
    "logger=csv",
]

# the console scripts installed beside this interpreter (the project's own virtual environment)
SCRIPTS = Path(sys.executable).parent
REPOSITORY = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"


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


def write_text_corpus(folder: Path, text: str | None = None, documents: int = 30) -> Path:
    """`documents` text files of real text (this file and conf/train.yaml), enough for tiny models."""
    folder.mkdir(parents=True, exist_ok=True)
    source = text if text is not None else Path(__file__).read_text() + Path(CONFIG_DIR, "train.yaml").read_text()
    for i in range(documents):
        (folder / f"doc_{i:02d}.txt").write_text(f"# document {i}\n" + source * (1 + i % 3))
    return folder


def train_tiny_run(root: Path, run_name: str, *overrides: str, env: dict | None = None) -> Path:
    """Train a tiny model (RoPE unless overridden) through the poslab-train console script into
    root/runs/run_name, as a user's run leaves its folder; returns its last.ckpt."""
    corpus = write_text_corpus(root / "corpus")
    flags = [o for o in overrides if o.startswith("--")]  # Hydra's flags come before the overrides
    overrides = [o for o in overrides if not o.startswith("--")]
    args = [*flags, "data=text_files", f"data.corpus.train={corpus}/*.txt", *TINY, "trainer.max_steps=3", *overrides]
    run_dir = root / "runs" / run_name
    out = subprocess.run(
        [str(SCRIPTS / "poslab-train"), *args, f"hydra.run.dir={run_dir}"],
        env=env or {**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


class UniformModel(torch.nn.Module):
    """Logits all zero: every next byte has probability 1/vocab."""

    def __init__(self, vocab_size: int, pos_enc=None):
        super().__init__()
        self.vocab_size = vocab_size
        self.pos_enc = pos_enc or NoPE()

    def forward(self, idx):
        return torch.zeros(*idx.shape, self.vocab_size)


def strict_json(path: Path) -> dict:
    """Parse as a strict JSON reader would: NaN and Infinity are not JSON."""

    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def run_console(monkeypatch, main, *argv: str) -> int:
    """Run a console script in this process, as typed; returns its exit status."""
    monkeypatch.setattr(sys, "argv", ["poslab", *argv])
    try:
        main()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def run_train(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    """poslab-train ARGS in `cwd` as a user types it (WANDB_MODE and the like in **env); it must succeed."""
    environment = {**os.environ, "WANDB_SILENT": "true", **env}
    out = subprocess.run(
        [str(SCRIPTS / "poslab-train"), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@dataclass
class LoggedToWandb:
    """The keys one offline wandb run recorded: history (a media or table key as itself, e.g.
    passkey/heatmap), summary, and the top level of its config."""

    history: set[str]
    summary: set[str]
    config: dict


def read_offline_wandb_run(path: Path) -> LoggedToWandb:
    """Read an offline run's run-*.wandb file as wandb sync would: the records of LevelDB's log
    format (32 KiB blocks; a 7-byte header per chunk: CRC, length, type full/first/middle/last)
    after the file's own 7-byte header, each a wandb Record protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind in (2, 3):
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
            pending = b""
    logged = LoggedToWandb(set(), set(), {})

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            logged.history.update(key(item) for item in record.history.item)
        elif kind == "summary":
            logged.summary.update(key(item) for item in record.summary.update)
        elif kind == "config":
            logged.config.update({key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            logged.config.update({key(item): json.loads(item.value_json) for item in record.run.config.update})
    # a logged image or table is recorded as its fields (passkey/heatmap/_type, ...)
    logged.history |= {k.rsplit("/", 1)[0] for k in logged.history if k.endswith("/_type")}
    logged.summary |= {k.rsplit("/", 1)[0] for k in logged.summary if k.endswith("/_type")}
    return logged


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.most = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.most = max(self.most, t.numel())
        return out
