"""Training-free extension by remapping RoPE's relative distance: ReRoPE, Leaky ReRoPE, Self-Extend.

RoPE's logit of query i on key j depends on d = i - j alone. These methods keep d within a window
and replace it past the window by a distance the model saw in training:

    ReRoPE        (Su 2023, bojone/rerope)              d < w: d    d >= w: w
    Leaky ReRoPE  (Su 2023, bojone/rerope)              d < w: d    d >= w: w + (d - w) / k
    Self-Extend   (Jin et al. 2024, arXiv 2401.01325)   d < W: d    d >= W: floor(i/G) - floor(j/G) + W - W/G

No single rotation of the queries and keys gives such a distance, so each is computed as the
reference code computes it: two sets of logits, the plain rotation for the near pairs and a second
rotation for the far ones, with query positions q'(i) and key positions k'(j) whose difference is
the remapped distance, merged by distance (`where(i - j < window, near, far)`):

    ReRoPE        q' = w                     k' = 0
    Leaky ReRoPE  q' = w + (i - w) / k       k' = j / k      (the reference: frequencies / k, q at i + w (k - 1))
    Self-Extend   q' = floor(i/G) + W - W/G  k' = floor(j/G)  (the reference's prefill; W - W/G is the shift)

Both reference patches also scale the queries by log-n (ReRoPE always, Self-Extend with its
`scale_base`); here that is a setting of its own, `eval.logit_temperature=logn`, so that each
method can be scored with and without it.

Attention itself (`attend`) runs the two passes as two softmaxes merged exactly: the near keys
(the last w of each query) as a band, (T, w), and the far keys (j <= i - w, a causal mask shifted
by w) through SDPA's fused causal kernel, with one extra key per query whose logit is the near
band's log-sum-exp and whose value marks it; the share that key takes is the near band's share of
the full softmax. So no (T, T) tensor is built at any length, and the far pass costs one causal
attention. `block_logits` gives the same logits block by block of query rows, for the explicit
path (with a sink, or positions that are not consecutive) and for the diagnostics.

Nothing here is a trained weight: every class is a member of the rotary family and scores a RoPE
checkpoint as it is (within the window, d < w, each is plain RoPE).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from poslab.encodings.rotary import RoPE, RotaryTables, rotate_pairs
from poslab.memory import row_blocks


class RemappedTables(NamedTuple):
    """What `block_logits` reads, prepared once per forward: the plain rotation's tables, the far
    rotation's tables for the queries and for the keys (each (..., T, d)), and the positions."""

    near: RotaryTables
    far_query: RotaryTables
    far_key: RotaryTables
    pos: torch.Tensor  # (T,) or (B, T)
    consecutive: bool  # positions that step by 1 along the sequence: distance in positions = in index


def _rows(tables: RotaryTables, start: int, stop: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return tables.cos[..., start:stop, :].to(dtype), tables.sin[..., start:stop, :].to(dtype)


class RemappedRoPE(RoPE):
    """RoPE with its relative distance remapped past `window` (see the module docstring).
    Subclasses give the far rotation's positions, `far_positions`."""

    composes_rotations = False  # the logits are two rotations merged by distance

    def __init__(self, n_embd: int, n_head: int, window: int, base: float = 10000.0):
        super().__init__(n_embd, n_head, base)
        if window < 1:
            raise ValueError(f"pos_enc.window must be a positive number of tokens, got {window}")
        self.window = int(window)

    def far_positions(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q'(pos), k'(pos)), float, of the shape of pos: the positions of the far rotation."""
        raise NotImplementedError

    def prepare(self, pos: torch.Tensor, length: int) -> RemappedTables:
        far_query, far_key = self.far_positions(pos)
        return RemappedTables(
            near=super().prepare(pos, length),
            far_query=super().prepare(far_query, length),
            far_key=super().prepare(far_key, length),
            pos=pos,
            # one host sync per forward, not per layer
            consecutive=bool((pos[..., 1:] - pos[..., :-1] == 1).all()),
        )

    def rotate(self, q, k, prepared: RemappedTables):
        # the rotations differ by distance, so they are applied to each block in block_logits
        return q, k

    def block_logits(self, q_rows, k_past, start: int, stop: int, prepared: RemappedTables) -> torch.Tensor:
        dtype = q_rows.dtype
        near = rotate_pairs(q_rows, *_rows(prepared.near, start, stop, dtype)) @ rotate_pairs(
            k_past, *_rows(prepared.near, 0, stop, dtype)
        ).transpose(-2, -1)
        far = rotate_pairs(q_rows, *_rows(prepared.far_query, start, stop, dtype)) @ rotate_pairs(
            k_past, *_rows(prepared.far_key, 0, stop, dtype)
        ).transpose(-2, -1)
        pos = prepared.pos
        distance = pos[..., start:stop, None] - pos[..., None, :stop]  # (rows, keys) or (B, rows, keys)
        if distance.dim() == 3:
            distance = distance.unsqueeze(1)  # per-sample positions: broadcast over heads
        return torch.where(distance < self.window, near, far)  # (B, H, rows, keys)

    def attend(self, q, k, v, scale: float, prepared: RemappedTables) -> torch.Tensor | None:
        """Causal attention (B, H, T, hd) under the remapped distance, from unrotated q, k, v: the
        near band and the far pass merged by their log-sum-exp (module docstring). None where the
        positions do not step by 1 (the path then computes block_logits)."""
        if not prepared.consecutive:
            return None
        B, H, T, hd = q.shape
        dtype, w = q.dtype, self.window
        q_near = rotate_pairs(q, *_rows(prepared.near, 0, T, dtype)) * scale
        k_near = rotate_pairs(k, *_rows(prepared.near, 0, T, dtype))
        near, near_lse = near_band_attention(q_near, k_near, v, w)  # (B, H, T, hd), (B, H, T, 1)
        if T <= w:
            return near
        q_far = rotate_pairs(q[:, :, w - 1 :], *_rows(prepared.far_query, w - 1, T, dtype)) * scale  # i >= w - 1
        k_far = rotate_pairs(k[:, :, : T - w], *_rows(prepared.far_key, 0, T - w, dtype))  # j <= T - 1 - w
        # Row r of the far pass is query i = r + w - 1; key 0 is the extra key, key c >= 1 is
        # j = c - 1: a square causal mask lets query i see j <= i - w, and the extra key always.
        # One more channel carries the extra key's logit (q: the near log-sum-exp, k: 1) and its
        # value (1); the head size is padded to a multiple of 8, which fused kernels take.
        width = -(-(hd + 1) // 8) * 8
        extra = torch.zeros(*k_far.shape[:2], 1, width, dtype=dtype, device=q.device)
        extra[..., hd] = 1
        q_far = torch.cat([q_far, near_lse[:, :, w - 1 :].to(dtype)], dim=-1)
        k_far = torch.cat([extra, F.pad(k_far, (0, width - hd))], dim=2)
        v_far = torch.cat([extra, F.pad(v[:, :, : T - w], (0, width - hd))], dim=2)
        far = F.scaled_dot_product_attention(
            F.pad(q_far, (0, width - hd - 1)), k_far, v_far, is_causal=True, scale=1.0
        )  # (B, H, T - w + 1, width)
        near_share = far[..., hd : hd + 1]
        merged = far[..., :hd] + near_share * near[:, :, w - 1 :]
        return torch.cat([near[:, :, : w - 1], merged], dim=2)

    def remapped_distance(self, pos: torch.Tensor) -> torch.Tensor:
        """The distance each (query, key) pair of positions pos (T,) is scored at: (T, T), float.
        Not used by the model (which merges two rotations); diagnostics and tests read it."""
        far_query, far_key = self.far_positions(pos)
        distance = (pos[:, None] - pos[None, :]).float()
        return torch.where(distance < self.window, distance, far_query[:, None] - far_key[None, :])


def near_band_attention(q, k, v, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query i (B, H, T, hd; q scaled) over its keys i - window + 1 .. i alone: the outputs
    (B, H, T, hd) and the log-sum-exp of the logits (B, H, T, 1). Keys are gathered as a sliding
    view, (rows, window) logits per block of rows within the memory budget."""
    B, H, T, hd = q.shape
    k_padded = F.pad(k, (0, 0, window - 1, 0))  # key j sits at j + window - 1
    v_padded = F.pad(v, (0, 0, window - 1, 0))
    outputs, lses = [], []
    for start, stop in row_blocks(T, B * H * window * hd):
        keys = k_padded[:, :, start : stop + window - 1].unfold(2, window, 1)  # (B, H, rows, hd, window)
        values = v_padded[:, :, start : stop + window - 1].unfold(2, window, 1)
        logits = (q[:, :, start:stop].unsqueeze(-2) @ keys).squeeze(-2)  # (B, H, rows, window)
        # slot m of row i is key i - window + 1 + m: before the sequence's start for the first rows
        rows = torch.arange(start, stop, device=q.device)[:, None]
        before_start = torch.arange(window, device=q.device) < window - 1 - rows
        logits = logits.masked_fill(before_start, float("-inf"))
        lse = logits.logsumexp(dim=-1, keepdim=True)
        outputs.append(((logits - lse).exp().unsqueeze(-2) @ values.transpose(-2, -1)).squeeze(-2))
        lses.append(lse)
    return torch.cat(outputs, dim=2), torch.cat(lses, dim=2)


class ReRoPE(RemappedRoPE):
    """Su, "ReRoPE" (2023; bojone/rerope, rerope_patch.py): distances past `window` are all scored
    as `window`: every far key looks as far as the window's edge."""

    def far_positions(self, pos):
        pos = pos.float()
        return torch.full_like(pos, float(self.window)), torch.zeros_like(pos)


class LeakyReRoPE(RemappedRoPE):
    """Su, "Leaky ReRoPE" (2023; bojone/rerope, leaky_rerope_patch.py): past `window` the distance
    keeps growing, `leak` times more slowly: w + (d - w) / leak. (The reference's
    scaling_factor is `leak`.) leak -> infinity is ReRoPE, leak = 1 plain RoPE."""

    def __init__(self, n_embd: int, n_head: int, window: int, leak: float = 16.0, base: float = 10000.0):
        super().__init__(n_embd, n_head, window, base)
        if not leak >= 1:
            raise ValueError(f"pos_enc.leak must be at least 1 (1 is plain RoPE), got {leak}")
        self.leak = float(leak)

    def far_positions(self, pos):
        pos = pos.float()
        return self.window + (pos - self.window) / self.leak, pos / self.leak


class SelfExtend(RemappedRoPE):
    """Jin et al., "LLM Maybe LongLM: Self-Extend LLM Context Window Without Tuning" (arXiv
    2401.01325; datamllab/LongLM, self_extend_patch/Llama.py). Within the neighbour window W
    (`window`), plain distances; past it, positions floor-divided by the group size G (`group`),
    the query's shifted by W - W/G so that the grouped distances continue from W. Positions seen in
    training then reach (L - W) G + W for a model trained at L.

    The shift follows the reference's prefill (W - W/G, a float when G does not divide W; its
    decoding path takes W - floor(W/G)). The reference drops the shift when the whole sequence is
    within W; then every pair is near and the shift is never used."""

    def __init__(self, n_embd: int, n_head: int, window: int, group: int = 8, base: float = 10000.0):
        super().__init__(n_embd, n_head, window, base)
        if group < 1:
            raise ValueError(f"pos_enc.group must be a positive whole number, got {group}")
        self.group = int(group)

    def far_positions(self, pos):
        grouped = torch.div(pos, self.group, rounding_mode="floor").float()
        return grouped + self.window - self.window / self.group, grouped
