"""scripts/bench.py at toy sizes, its FLOP count by hand, and the speed settings of a training run:
model.compile (checkpoints keep their parameter names) and fused AdamW (the same update)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import poslab.training.optim
from helpers import REPOSITORY
from poslab.encodings import RoPE
from poslab.model import GPT
from poslab.training import LitGPT
from poslab.training.optim import build_optimizer, compile_enabled, fused_adamw_supported

ROOT = REPOSITORY
QUICKSTART_ENCODINGS = ["nope", "sinusoidal", "learned", "rope", "rope_pi", "alibi"]
GPT_SMALL = {"n_layer": 4, "n_head": 4, "n_embd": 128, "context": 128, "batch": 32}


def benchlib():
    """scripts/benchlib, the benchmark's modules (scripts/ is not a package: put it on the path)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import benchlib.evaluation
    import benchlib.models

    return benchlib


def has_x_transformers() -> bool:
    return importlib.util.find_spec("x_transformers") is not None


def test_quick_bench_writes_a_table_and_json_with_every_section(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (record_path,) = tmp_path.glob("*_cpu_quick.json")
    record = json.loads(record_path.read_text())
    assert record_path.with_suffix(".md").read_text().startswith("# poslab speed")

    machine = record["machine"]
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__ and machine["cpu_count"] >= 1
    assert len(machine["load_average_start"]) == 3 and len(machine["load_average_end"]) == 3
    assert record["matmul_peak"]["dtype"] == "float32" and record["matmul_peak"]["flops_per_s"] > 0
    assert record["training_meta"] == {"default_variant": "poslab eager", "compile_auto_here": False}

    assert list(record["training"]) == QUICKSTART_ENCODINGS
    for encoding, row in record["training"].items():
        eager = row["variants"]["poslab eager"]
        assert len(eager["rounds"]) == 1 and eager["median"] == eager["rounds"][0] > 0
        assert 0 < row["mfu"]
        assert ("x-transformers" in row["variants"]) == has_x_transformers(), encoding
        for variant in ("poslab eager", "x-transformers"):
            if variant in row["variants"]:  # profiled: every shared kernel ran, none took the whole step
                profiled = row["variants"][variant]["profiled"]
                kernels = profiled["kernels_ms"]
                assert list(kernels) == ["matmul", "attention kernel", "GELU"]
                assert all(ms > 0 for ms in kernels.values()) and sum(kernels.values()) < profiled["step_ms"], kernels
    options = record["training"]["rope"]["variants"]
    assert {"poslab eager, AdamW for-loop", "poslab eager, AdamW foreach"} <= set(options)
    assert "profiled" in options["poslab eager, RoPE per layer through autograd"]
    if has_x_transformers():
        paired = record["training"]["rope"]["ratio_to_x_transformers"]
        assert len(paired["rounds"]) == 1 and paired["median"] > 0
    assert record["lightning"]["trainer_fit"]["median"] > 0 and record["lightning"]["compiled"] is False

    for encoding, by_length in record["evaluation"].items():
        assert list(by_length) == ["1x", "4x", "16x", "32x"]
        assert [cell["eval_length"] for cell in by_length.values()] == [16, 64, 256, 512]
        for factor, cell in by_length.items():
            if encoding == "learned" and factor != "1x":  # no positions past its table
                assert cell["status"] == "unsupported"
            else:
                assert cell["status"] == "ok" and cell["tokens_per_s"] > 0 and cell["peak_bytes"] >= 0, cell
    assert "targets" not in record  # the targets are in experiments/benchmarks/README.md, not in code
    markdown = record_path.with_suffix(".md").read_text()
    assert "## Where a step's time goes" in markdown and markdown.count("| poslab |") == len(QUICKSTART_ENCODINGS)


@pytest.mark.skipif(not has_x_transformers(), reason="x-transformers is the bench extra")
@pytest.mark.parametrize("encoding", QUICKSTART_ENCODINGS)
def test_x_transformers_counterpart_is_the_same_size(encoding, tmp_path):
    models = benchlib().models
    cfg = models.compose_train_config(encoding, GPT_SMALL, torch.device("cpu"), str(tmp_path))
    ours = models.poslab_model(cfg).model
    theirs = models.xt_model(encoding, GPT_SMALL, vocab=256)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # poslab's LayerNorms have biases (9 x 128), x-transformers' do not; its sinusoid has a learned scale
    assert count(ours) - count(theirs) in (9 * 128, 9 * 128 - 1)
    tokens = torch.randint(0, 256, (2, 128))
    assert theirs(tokens).shape == ours(tokens).shape == (2, 128, 256)


def test_compile_setting():
    assert compile_enabled("auto", "cpu") is False and compile_enabled("auto", "cuda") is True
    assert compile_enabled(True, "cpu") is True and compile_enabled(False, "cuda") is False
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="model.compile must be true, false or auto"):
            compile_enabled(bad, "cpu")
    net = {"_target_": "poslab.model.GPT", "vocab_size": 50, "n_layer": 1, "n_head": 2, "n_embd": 16}
    optimizer = {"_target_": "torch.optim.AdamW", "_partial_": True}
    with pytest.raises(ValueError, match="model.compile"):
        LitGPT(net, {"_target_": "poslab.encodings.NoPE"}, optimizer, {}, compile="sometimes")


def test_compiled_training_keeps_checkpoint_names(train_config, monkeypatch):
    """model.compile=true compiles the training forward (a Dynamo backend that counts the graphs
    it is given stands in for Inductor) and the checkpoint has the uncompiled model's keys."""
    from poslab.commands.train import train

    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    monkeypatch.setitem(poslab.training.optim.COMPILE_OPTIONS, "backend", counting_backend)
    torch._dynamo.reset()
    cfg = train_config("pos_enc=alibi", "model.compile=true", "trainer.max_steps=2")
    results = train(cfg)
    assert results["status"] == "ok" and results["train"]["steps"] == 2
    assert graphs, "the training forward was not compiled"
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=False)
    plain = LitGPT(cfg.model.net, cfg.pos_enc, cfg.model.optimizer, cfg.model.scheduler)
    assert list(checkpoint["state_dict"]) == list(plain.state_dict())
    assert not any("_orig_mod" in key or "_train_forward" in key for key in checkpoint["state_dict"])


def test_fused_adamw_gives_the_for_loop_update_and_auto_fuses_on_cuda_only():
    def trained(optimizer_cfg):
        torch.manual_seed(0)
        model = GPT(vocab_size=50, n_layer=1, n_head=2, n_embd=16)
        optimizer = build_optimizer(model.parameters(), optimizer_cfg)
        tokens = torch.randint(0, 50, (4, 9), generator=torch.Generator().manual_seed(1))
        for _ in range(3):
            logits = model(tokens[:, :-1])
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
            optimizer.step()
            optimizer.zero_grad()
        return optimizer, torch.cat([p.detach().flatten() for p in model.parameters()])

    base = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-2, "weight_decay": 0.1}
    fused, fused_weights = trained({**base, "fused": True})  # torch's CPU kernel (torch >= 2.4)
    loop, loop_weights = trained({**base, "fused": False, "foreach": False})
    auto, _ = trained({**base, "fused": "auto"})
    default, _ = trained({**base, "fused": None})
    assert fused.defaults["fused"] and not auto.defaults["fused"]  # auto: CUDA only
    assert fused_adamw_supported("cuda") and not fused_adamw_supported("cpu")
    assert not loop.defaults["fused"] and not default.defaults["fused"]
    assert [g["weight_decay"] for g in fused.param_groups] == [0.1, 0.0]
    torch.testing.assert_close(fused_weights, loop_weights, rtol=1e-5, atol=1e-6)
    assert not torch.equal(loop_weights, trained({**base, "lr": 2e-2, "fused": False})[1])  # the steps moved them


def test_evaluation_worker_reports_its_own_peak_memory():
    """A worker started by a large process (this one) still reports what scoring took: at least the
    float32 logits of a batch, 8 windows x 2048 x 256 x 4 bytes = 16 MiB."""
    evaluation = benchlib().evaluation
    spec = {
        "net": {"_target_": "poslab.model.GPT", "vocab_size": 256, "n_layer": 1, "n_head": 2, "n_embd": 32},
        "pos_enc": {"_target_": "poslab.encodings.ALiBi", "n_head": 2},
        "length": 2048,
        "num_tokens": 4096,
        "batch_tokens": 16384,
        "device": "cpu",
    }
    (cell,) = evaluation.eval_in_subprocess([spec], threads=1)
    assert cell["status"] == "ok" and cell["tokens_per_s"] > 0
    assert cell["peak_bytes"] >= 16 * 2**20, cell


def test_the_per_layer_rope_it_is_timed_against_gives_the_same_numbers():
    """The benchmark's 'RoPE per layer through autograd' (tables in every layer, autograd through
    x cos + rotate_half(x) sin) is the same model as poslab's RoPE: logits and gradients to the bit."""
    models = benchlib().models

    def logits_and_grads(wrap: bool):
        torch.manual_seed(0)
        model = GPT(vocab_size=64, n_layer=2, n_head=4, n_embd=64, pos_enc=RoPE(64, 4))
        if wrap:
            models.RoPEThroughAutograd.wrap(model.pos_enc)
        tokens = torch.randint(0, 64, (3, 33), generator=torch.Generator().manual_seed(1))
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        return logits, [p.grad for p in model.parameters()]

    (ours, our_grads), (theirs, their_grads) = logits_and_grads(False), logits_and_grads(True)
    assert torch.equal(ours, theirs) and all(torch.equal(a, b) for a, b in zip(our_grads, their_grads, strict=True))


def test_encodings_bench_times_new_methods_and_settings_against_rope(tmp_path):
    """scripts/bench_encodings.py at toy sizes: an encoding with weights per layer and an entry
    with model settings each get a row, and the table is written where --out says."""
    out = tmp_path / "speed.md"
    sizes = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--context", "16", "--batch", "2"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_encodings.py"), "--encodings", "fox", "cope", "rope+sink+ssmax"]
        + ["--repeats", "1", "--steps", "1", *sizes, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    for name in ("rope", "fox", "cope", "rope+sink+ssmax"):
        assert f"| {name} | " in table
    bad = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_encodings.py"), "--encodings", "rope+hot", *sizes],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode != 0 and "unknown setting 'hot'; allowed: sink, logn, llama4, ssmax" in bad.stderr
