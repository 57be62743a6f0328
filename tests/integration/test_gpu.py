"""On a CUDA machine (scripts/gpu_check.sh runs this file there): training in bf16 with the
default compile setting for every quickstart encoding, the compiled FlexAttention path against the
materialised bias, and gpt_small scored at 32x a 512-token context within 80 GB. Skipped without
CUDA. The parts a CPU can check, the GPU study's config and gpu_check.sh's syntax, run anywhere."""

import math
import shutil
import subprocess

import numpy as np
import pytest
import torch

from helpers import REPOSITORY, compose_config
from poslab.encodings import ALiBi, RoPE, T5Bias
from poslab.evaluation.protocols import score_windows
from poslab.model import GPT

ROOT = REPOSITORY
QUICKSTART_ENCODINGS = ["nope", "sinusoidal", "learned", "rope", "rope_pi", "alibi"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def train_on_gpu(train_config, pos_enc: str, *overrides: str) -> dict:
    from poslab.commands.train import train

    cfg = train_config(f"pos_enc={pos_enc}", "trainer=gpu", "trainer.max_steps=5", *overrides)
    assert cfg.trainer.precision == "bf16-mixed"
    results = train(cfg)
    assert results["status"] == "ok" and results["train"]["steps"] == 5
    assert math.isfinite(results["train"]["train_loss"])
    rows = {row["eval_length"]: row for row in results["extrapolation"]}
    assert rows[16]["status"] == "ok" and math.isfinite(rows[16]["loss"])
    assert torch.get_float32_matmul_precision() == "high"  # LitGPT.setup: TF32 float32 matmuls on CUDA
    return results


@cuda
@pytest.mark.parametrize("pos_enc", QUICKSTART_ENCODINGS)
def test_every_quickstart_encoding_trains_in_bf16_on_the_gpu(train_config, pos_enc):
    train_on_gpu(train_config, pos_enc, "model.compile=false")  # compiled: the next test, and gpu_check.sh


@cuda
def test_compiled_training_on_the_gpu(train_config):
    """model.compile=auto compiles on CUDA; alibi takes the flex path inside the compiled forward."""
    train_on_gpu(train_config, "alibi", "model.compile=auto")


@pytest.fixture
def full_float32_matmuls():
    """Training on CUDA turns on TF32 for the process; a float32 comparison needs it off."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)


@cuda
@pytest.mark.parametrize("encoding", ["alibi", "t5_bias"])
def test_compiled_flex_path_matches_the_materialised_bias_on_the_gpu(encoding, full_float32_matmuls):
    """Same weights, attention=flex (compiled FlexAttention, causal BlockMask) against sdpa with
    the (H, T, T) bias: logits and gradients agree in float32, at a length that is not a multiple
    of the 128-token block."""
    device = torch.device("cuda")

    def model(attention: str) -> GPT:
        torch.manual_seed(0)
        pos_enc = ALiBi(4) if encoding == "alibi" else T5Bias(4)
        return GPT(vocab_size=256, n_layer=2, n_head=4, n_embd=128, pos_enc=pos_enc, attention=attention).to(device)

    tokens = torch.randint(0, 256, (2, 300), device=device, generator=torch.Generator(device).manual_seed(0))
    outputs = {}
    for attention in ("flex", "sdpa"):
        net = model(attention)
        logits = net(tokens)
        logits.float().logsumexp(-1).mean().backward()
        outputs[attention] = (logits.detach(), net.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(outputs["flex"][0], outputs["sdpa"][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(outputs["flex"][1], outputs["sdpa"][1], rtol=1e-3, atol=1e-5)


@cuda
@pytest.mark.parametrize("encoding", ["rope", "alibi"])
def test_gpt_small_at_context_512_scores_16384_tokens_within_80_gb(encoding):
    device = torch.device("cuda")
    torch.manual_seed(0)
    pos_enc = RoPE(128, 4) if encoding == "rope" else ALiBi(4)
    model = GPT(vocab_size=256, n_layer=4, n_head=4, n_embd=128, pos_enc=pos_enc).to(device).eval()
    tokens = np.random.default_rng(0).integers(0, 256, 2 * 16384 + 1)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    loss_sum, counts = score_windows(model, tokens, 32 * 512, 32 * 512, 16384, device)
    peak = torch.cuda.max_memory_allocated(device) - before
    assert counts.sum() == 2 * 16384 and np.isfinite(loss_sum).all()
    # an untrained model on uniform random bytes: about ln(256) nats per token
    assert loss_sum.sum() / counts.sum() == pytest.approx(math.log(256), rel=0.05)
    assert peak < 80 * 2**30, f"{peak / 2**30:.1f} GiB"


# --- the GPU study and gpu_check.sh, checked on any machine ----------------------------------------


def test_alibi_wikitext_experiment_composes(tmp_path):
    cfg = compose_config("train", ["experiment=alibi_wikitext"], tmp_path / "run")
    assert cfg.data.context == 512 and cfg.data.corpus.path == "Salesforce/wikitext"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.precision == "bf16-mixed"
    assert list(cfg.eval.lengths_x)[-1] * cfg.data.context == 16384
    assert cfg.eval.num_tokens >= 16384
    assert (cfg.model.net.n_layer, cfg.model.net.n_embd, cfg.model.net.n_head) == (12, 768, 12)


def test_alibi_wikitext_sweeps_the_papers_four_encodings():
    from omegaconf import OmegaConf

    experiment = OmegaConf.load(ROOT / "conf" / "experiment" / "alibi_wikitext.yaml")
    assert experiment.hydra.sweeper.params.pos_enc.split(",") == ["sinusoidal", "rope", "t5_bias", "alibi"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_script_parses_and_says_what_it_does():
    script = ROOT / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "--prepare" in done.stdout
