"""What attention does inside a trained model as the sequence outgrows the training context.

The model computes attention with F.scaled_dot_product_attention, which never materialises the
probabilities. For analysis they are recomputed from each layer's input through the layer's own
pieces: its projection (CausalSelfAttention.project, which applies the encoding's rotate() with
the forward's prepared tables), its logit scale, and the chunked path's blocks of query rows with
the encoding's bias and the causal mask folded in (BlockBias); then the layer's own terms (a bias
from its input or its logits, a sink) and softmax, as the attention path computes them
(attention.block_probabilities). With a sink a row's probabilities sum to less than 1: the rest is
the sink's. A forward pre-hook
on every block's attention does this while the model runs, one layer and one block of query rows
at a time, and keeps only per-head sums: memory stays within one block's budget whatever the
length.

Per layer and head, averaged over query rows (and windows):
    entropy               -sum_j p_ij ln p_ij, nats; uniform attention over i+1 keys gives ln(i+1)
    mean distance         sum_j p_ij (i - j), tokens; the previous token alone gives 1
    share beyond context  sum of p_ij over keys with i - j >= train_context, distances training
                          never showed; averaged over the queries that have such keys (i >= T)
    sink share            with model.net.sink, 1 - sum_j p_ij: the mass the sink takes (the
                          statistics above are over the keys' probabilities, which then sum to
                          less than 1, so a uniform reference no longer applies to them exactly)

Shapes: B batch, H heads, T length, hd head size, rows a chunk of query rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from poslab.encodings import LengthNotSupportedError
from poslab.memory import BLOCK_ELEMENTS, row_blocks
from poslab.model import GPT, BlockBias, CausalSelfAttention, PreparedPositions
from poslab.model.attention import block_probabilities, with_input_bias


def attention_probabilities(
    attn: CausalSelfAttention, x: torch.Tensor, prepared: PreparedPositions, budget: int = BLOCK_ELEMENTS
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (first query row, probabilities (B, H, rows, keys), v (B, H, keys, hd)) block by
    block, the keys of a block being those up to its last row."""
    q, k, v = attn.project(x, prepared)
    B, H, T, head_dim = q.shape
    scale = attn.logit_scale(prepared, head_dim)
    terms = attn.terms(x, prepared)
    block_bias = BlockBias(prepared.pos_enc, prepared.pos, budget, with_mask_only=True)
    for start, stop in row_blocks(T, B * H * T, budget):
        mask = with_input_bias(block_bias(start, stop, q.dtype), terms, start, stop)
        # (B, H, rows, stop)
        probs = block_probabilities(q[:, :, start:stop], k[:, :, :stop], scale, mask, terms, start)
        yield start, probs, v[:, :, :stop]


def recomputed_attention_output(
    attn: CausalSelfAttention, x: torch.Tensor, prepared: PreparedPositions, **kwargs
) -> torch.Tensor:
    """The layer's output (B, T, C) from the recomputed probabilities: what the model's own
    attention returns, if the recomputation is right."""
    B, T, C = x.shape
    parts = [probs @ v for _, probs, v in attention_probabilities(attn, x, prepared, **kwargs)]
    y = torch.cat(parts, dim=2)  # (B, H, T, hd)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


def row_statistics(
    probs: torch.Tensor, query_index: torch.Tensor, train_context: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per query row: entropy (nats), mean attention distance (tokens), and the attention mass on
    keys at distance >= train_context. probs (..., rows, T) over keys 0..T-1, rows summing to 1;
    query_index (rows,) the rows' indices in the sequence. Each result is (..., rows)."""
    key_index = torch.arange(probs.size(-1), device=probs.device)
    distance = (query_index.unsqueeze(-1) - key_index).clamp(min=0).to(probs.dtype)  # (rows, T)
    entropy = -torch.special.xlogy(probs, probs).sum(-1)  # 0 ln 0 = 0 for masked keys
    mean_distance = (probs * distance).sum(-1)
    beyond_context = (probs * (distance >= train_context)).sum(-1)
    return entropy, mean_distance, beyond_context


@dataclass
class HeadSums:
    """Running sums per (layer, head), in float64."""

    n_layer: int
    n_head: int
    entropy: np.ndarray = field(init=False)
    distance: np.ndarray = field(init=False)
    beyond: np.ndarray = field(init=False)
    sink: np.ndarray = field(init=False)
    rows: int = 0
    rows_past_context: int = 0

    def __post_init__(self):
        self.entropy, self.distance, self.beyond, self.sink = (np.zeros((self.n_layer, self.n_head)) for _ in range(4))


@contextmanager
def layer_pre_hooks(model: GPT, probe):
    """While active, probe(layer) -> hook(attn, (x, prepared)) runs before every layer's attention."""
    handles = [block.attn.register_forward_pre_hook(probe(i)) for i, block in enumerate(model.blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def attention_probe(model: GPT, train_context: int, sums: HeadSums, budget: int = BLOCK_ELEMENTS):
    """While active, every forward pass of `model` adds each layer's per-head statistics to `sums`."""

    def probe(layer: int):
        def hook(attn, args):
            x, prepared = args
            with torch.no_grad():
                for start, probs, _ in attention_probabilities(attn, x, prepared, budget):
                    query_index = torch.arange(start, start + probs.size(-2), device=probs.device)
                    entropy, distance, beyond = (s.double() for s in row_statistics(probs, query_index, train_context))
                    # (B, H, rows) -> per head, summed over batch and rows
                    sums.entropy[layer] += entropy.sum((0, 2)).cpu().numpy()
                    sums.distance[layer] += distance.sum((0, 2)).cpu().numpy()
                    sums.beyond[layer] += beyond.sum((0, 2)).cpu().numpy()
                    sums.sink[layer] += (1 - probs.double().sum(-1)).sum((0, 2)).cpu().numpy()
            if layer == 0:  # rows are counted once per forward, not once per layer
                B, T = x.shape[:2]
                sums.rows += B * T
                sums.rows_past_context += B * max(0, T - train_context)

        return hook

    with layer_pre_hooks(model, probe):
        yield sums


def uniform_reference(length: int, train_context: int) -> dict:
    """The three statistics of uniform causal attention at this length, averaged like the model's:
    the line a head that has stopped discriminating between keys would sit on."""
    i = np.arange(length, dtype=np.float64)
    past = i[i >= train_context]
    return {
        "entropy": float(np.log(i + 1).mean()),
        "mean_distance": float((i / 2).mean()),
        "share_beyond_context": float(((past + 1 - train_context) / (past + 1)).mean()) if len(past) else None,
    }


def attention_at_length(model: GPT, tokens: np.ndarray, length: int, train_context: int, device: torch.device) -> dict:
    """Statistics at one length over the held-out `tokens` cut into windows of `length`, one
    window per forward pass. A row: eval_length, status, windows, loss, per-layer per-head figures."""
    row = {"eval_length": length, "length_ratio": length / train_context, "status": "ok", "reason": None}
    n_layer, n_head = len(model.blocks), model.blocks[0].attn.n_head
    sums = HeadSums(n_layer, n_head)
    windows = (len(tokens) - 1) // length
    loss_sum = 0.0
    try:
        model.pos_enc.check_length(length)
        with torch.no_grad(), attention_probe(model, train_context, sums):
            for w in range(windows):
                window = torch.from_numpy(tokens[w * length : (w + 1) * length + 1].astype(np.int64)).to(device)
                logits = model(window[:-1].unsqueeze(0))
                loss_sum += float(F.cross_entropy(logits[0].float(), window[1:], reduction="sum"))
    except LengthNotSupportedError as error:
        return {**row, "status": "unsupported", "reason": str(error)}
    except torch.OutOfMemoryError as error:
        return {**row, "status": "out_of_memory", "reason": str(error).splitlines()[0]}
    past = sums.rows_past_context
    with_sink = getattr(model, "sink", False)
    beyond = sums.beyond / past if past else np.full_like(sums.beyond, np.nan)
    row.update(
        windows=windows,
        loss=loss_sum / sums.rows,
        uniform=uniform_reference(length, train_context),
        layers=[
            {
                "layer": layer,
                "heads": [
                    {
                        "head": head,
                        "entropy": float(sums.entropy[layer, head] / sums.rows),
                        "mean_distance": float(sums.distance[layer, head] / sums.rows),
                        "share_beyond_context": float(beyond[layer, head]),
                        **({"sink_share": float(sums.sink[layer, head] / sums.rows)} if with_sink else {}),
                    }
                    for head in range(n_head)
                ],
            }
            for layer in range(n_layer)
        ],
    )
    return row


def attention_profile(
    model: GPT, tokens: np.ndarray, lengths: list[int], train_context: int, device: torch.device, progress=None
) -> list[dict]:
    """attention_at_length at every length, on the same held-out tokens."""
    model.eval()
    rows = []
    for length in lengths:
        rows.append(attention_at_length(model, tokens, length, train_context, device))
        if progress is not None:
            progress(rows[-1])
    return rows


def mean_log_forget_gates(
    model: GPT, tokens: np.ndarray, length: int, device: torch.device, max_windows: int = 64
) -> np.ndarray | None:
    """(layers, heads): the mean of log f over the held-out `tokens` in windows of `length`, for
    an encoding with forget gates (FoX's `log_forget_gates`); None for any other. A head's bias at
    distance m is then m times this on average: its decay per token, like an ALiBi slope."""
    gates_of = getattr(model.pos_enc, "log_forget_gates", None)
    if gates_of is None:
        return None
    sums = np.zeros((len(model.blocks), model.blocks[0].attn.n_head))
    counted = [0]

    def probe(layer: int):
        def hook(attn, args):
            log_gates = gates_of(args[0], layer).double()  # (B, H, T)
            sums[layer] += log_gates.sum((0, 2)).cpu().numpy()
            if layer == 0:
                counted[0] += log_gates.shape[0] * log_gates.shape[2]

        return hook

    model.eval()
    with layer_pre_hooks(model, probe), torch.no_grad():
        for w in range(min(max_windows, (len(tokens) - 1) // length)):
            window = torch.from_numpy(tokens[w * length : (w + 1) * length].astype(np.int64)).to(device)
            model(window.unsqueeze(0))
    return sums / max(1, counted[0])


STATISTICS = ("entropy", "mean_distance", "share_beyond_context")


def statistic_table(rows: list[dict], statistic: str) -> np.ndarray:
    """(lengths, layers, heads) of one statistic; NaN where a length has no value."""
    shape = next(((len(r["layers"]), len(r["layers"][0]["heads"])) for r in rows if r["status"] == "ok"), (0, 0))
    table = np.full((len(rows), *shape), np.nan)
    for i, row in enumerate(rows):
        if row["status"] != "ok":
            continue
        for layer in row["layers"]:
            for head in layer["heads"]:
                value = head[statistic]
                table[i, layer["layer"], head["head"]] = np.nan if value is None else value
    return table
