"""The models compared: poslab's GPT as `poslab-train` builds it, and x-transformers' decoder of
the same size and encoding."""

from __future__ import annotations

import importlib.metadata

import torch


def compose_train_config(encoding: str, sizes: dict, device: torch.device, output_dir: str):
    """conf/train.yaml with pos_enc=NAME at these sizes, as `poslab-train` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from poslab.config import CONFIG_DIR
    from poslab.config.resolvers import register_resolvers

    register_resolvers()
    overrides = [
        f"pos_enc={encoding}",
        f"trainer={'gpu' if device.type == 'cuda' else 'cpu'}",
        "logger=csv",
        f"paths.output_dir={output_dir}",
        f"model.net.n_layer={sizes['n_layer']}",
        f"model.net.n_head={sizes['n_head']}",
        f"model.net.n_embd={sizes['n_embd']}",
        f"data.context={sizes['context']}",
        f"data.batch_size={sizes['batch']}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def poslab_model(cfg):
    """The LightningModule poslab-train builds (its .model is the GPT)."""
    from poslab.training import LitGPT

    return LitGPT(cfg.model.net, cfg.pos_enc, cfg.model.optimizer, cfg.model.scheduler)


# How each encoding is spelled in x-transformers. Its decoder: pre-LayerNorm blocks, separate
# q/k/v projections, a 4x GELU feed-forward, no biases (ff_no_bias), tied embeddings and SDPA
# (attn_flash), rotary over the whole head as poslab's (rotary_emb_dim; its default is half).
# x-transformers has no fixed sinusoid: scaled_sinu_pos_emb is one with a learned scale. rope_pi
# within its training context is RoPE. T5's bias is not supported by its SDPA path.
def xt_encoding(encoding: str, head_dim: int, n_head: int) -> tuple[dict, dict] | None:
    """(Decoder keywords, TransformerWrapper keywords) for `encoding`, or None."""
    no_abs = {"use_abs_pos_emb": False}
    return {
        "nope": ({}, no_abs),
        "sinusoidal": ({}, {"scaled_sinu_pos_emb": True}),
        "learned": ({}, {}),
        "rope": ({"rotary_pos_emb": True, "rotary_emb_dim": head_dim}, no_abs),
        "rope_pi": ({"rotary_pos_emb": True, "rotary_emb_dim": head_dim}, no_abs),
        "alibi": ({"alibi_pos_bias": True, "alibi_num_heads": n_head}, no_abs),
        "t5_bias": ({"rel_pos_bias": True, "attn_flash": False}, no_abs),
    }.get(encoding)


def x_transformers_version() -> str | None:
    try:
        return importlib.metadata.version("x-transformers")
    except importlib.metadata.PackageNotFoundError:
        return None


def xt_model(encoding: str, sizes: dict, vocab: int):
    """x-transformers' decoder at poslab's size with `encoding`, or None (not installed, or no
    counterpart)."""
    if x_transformers_version() is None:
        return None
    spelling = xt_encoding(encoding, sizes["n_embd"] // sizes["n_head"], sizes["n_head"])
    if spelling is None:
        return None
    from x_transformers import Decoder, TransformerWrapper

    decoder_kwargs, wrapper_kwargs = spelling
    decoder = Decoder(
        dim=sizes["n_embd"],
        depth=sizes["n_layer"],
        heads=sizes["n_head"],
        attn_dim_head=sizes["n_embd"] // sizes["n_head"],
        ff_no_bias=True,
        **{"attn_flash": True, **decoder_kwargs},
    )
    return TransformerWrapper(
        num_tokens=vocab, max_seq_len=sizes["context"], attn_layers=decoder, tie_embedding=True, **wrapper_kwargs
    )


class RoPEThroughAutograd:
    """RoPE without the encodings' prepare() hook: cos and sin recomputed in every
    layer (with a read of the positions from the device), and the rotation x cos + rotate_half(x) sin
    differentiated by autograd. The same numbers as poslab's RoPE; timed beside it, it shows what
    preparing once per forward and the rotation's own gradient give."""

    @staticmethod
    def wrap(encoding):
        import torch

        from poslab.encodings import RoPE

        class PerLayerRoPE(type(encoding)):
            def prepare(self, pos, length):
                return pos

            def rotate(self, q, k, pos):
                inv_freq, _ = self.frequencies(int(pos.max()) + 1)
                angles = pos.float().unsqueeze(-1) * inv_freq.float()
                if angles.dim() == 3:
                    angles = angles.unsqueeze(1)
                angles = torch.cat((angles, angles), dim=-1)
                cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)

                def rotate_half(x):
                    first, second = x.chunk(2, dim=-1)
                    return torch.cat((-second, first), dim=-1)

                return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

        assert isinstance(encoding, RoPE)
        encoding.__class__ = PerLayerRoPE
        return encoding
