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

The logits are computed block by block of query rows (`block_logits`); the model then takes its
explicit attention path (the chunked one in evaluation), so no (T, T) tensor is built at any
length. Nothing here is a trained weight: every class is a member of the rotary family and scores
a RoPE checkpoint as it is (within the window, d < w, each is plain RoPE).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from poslab.encodings.rotary import RoPE, RotaryTables, rotate_pairs


class RemappedTables(NamedTuple):
    """What `block_logits` reads, prepared once per forward: the plain rotation's tables, the far
    rotation's tables for the queries and for the keys (each (..., T, d)), and the positions."""

    near: RotaryTables
    far_query: RotaryTables
    far_key: RotaryTables
    pos: torch.Tensor  # (T,) or (B, T)


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

    def remapped_distance(self, pos: torch.Tensor) -> torch.Tensor:
        """The distance each (query, key) pair of positions pos (T,) is scored at: (T, T), float.
        Not used by the model (which merges two rotations); diagnostics and tests read it."""
        far_query, far_key = self.far_positions(pos)
        distance = (pos[:, None] - pos[None, :]).float()
        return torch.where(distance < self.window, distance, far_query[:, None] - far_key[None, :])


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
