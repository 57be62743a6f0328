"""Windowed attention with sinks, as an evaluation setting for any encoding (`eval.window`).

Query i attends to the first `sinks` tokens and to its `local` most recent ones (itself included),
the Lambda-shaped mask both methods share; they differ in the distance a sink is scored at:

    streaming_llm  Xiao et al., StreamingLLM (arXiv 2309.17453), section 3.2: positions are those
                   in the cache, sinks first, then the window, so once the window has moved on
                   (i >= sinks + local - 1) the query sits at cache position sinks + local - 1 and
                   sink j at j: sink distance min(i, sinks + local - 1) - j
    lm_infinite    Han et al., LM-Infinite (arXiv 2308.16137), section 4: positions as they are, with
                   every distance capped at the training context L: sink distance min(i - j, L)

Within the window both keep the distance i - j. (Positions are the sequence's own, pos[i], with
cache positions taken as the positions of those indices.) What a distance means depends on the
encoding, so the remapping is done where the encoding puts position:

    rotary (RoPE and its scalings)  a sink's logit is the query rotated by the remapped position's
                                    offset, times the key as rotated (rotations compose)
    bias (ALiBi, T5, KERPLE, FIRE)  a sink's bias is the encoding's bias at the remapped positions
    none in attention (NoPE, FoX,   the mask alone: there is no position to remap (FoX's gates and
    CoPE)                           CoPE's counts run over the keys the mask leaves)

Encodings that put position into the token embeddings (sinusoidal, learned) cannot be re-indexed
per query in one forward, and xPos and the remapping variants (ReRoPE, Self-Extend) have no
rotation that composes: `window_refusal` says so before any scoring.

Each block of query rows (at most `local` of them) is computed over the keys it can see: the sinks
and the `local` keys before each row, so a block holds at most (rows, sinks + 2 local) logits, no
(T, T) tensor exists, and the compute grows with T times the window, not with T squared. (With a
bias from the input or from the logits, FoX's and CoPE's, which are laid out over every key up to
the block's last row, the block keeps every such key, the rest masked.)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from poslab.encodings import PositionalEncoding, mechanism_of
from poslab.memory import row_blocks, rows_per_block
from poslab.model.attention import NO_TERMS, LayerTerms, attend_block, sdpa_mask

WINDOW_METHODS = ("streaming_llm", "lm_infinite")


@dataclass(frozen=True)
class AttentionWindow:
    """eval.window, checked: `sinks` first tokens and `local` recent ones per query; `cap` is
    lm_infinite's distance limit (the training context)."""

    sinks: int
    local: int
    method: str
    cap: int

    def label(self) -> str:
        return f"{self.method}(sinks={self.sinks}, local={self.local})"


def window_refusal(model) -> str | None:
    """Why a GPT's encoding cannot be scored with a window (in some layer), or None when it can."""
    for layer in range(len(model.blocks)):
        encoding = model.pos_enc.for_layer(layer)
        mechanism = mechanism_of(encoding)
        if mechanism == "absolute":
            return "it adds positions to the token embeddings, which a window cannot re-index per query"
        if mechanism == "rotary" and not getattr(encoding, "composes_rotations", False):
            return "its rotation does not compose with a shift (xPos's decay, or a remapping of its own)"
    return None


def visible(start: int, keys: torch.Tensor, stop: int, window: AttentionWindow) -> torch.Tensor:
    """(rows, keys) bool: which of the keys (their indices) the rows [start, stop) see: the sinks
    and the last `local`."""
    i = torch.arange(start, stop, device=keys.device).unsqueeze(-1)
    return (keys <= i) & ((keys < window.sinks) | (i - keys < window.local))


def block_keys(start: int, stop: int, window: AttentionWindow, device) -> torch.Tensor:
    """The indices of the keys rows [start, stop) can see, in order: the sinks, then the `local`
    keys before the block's first row up to its last (sinks first, so sink j is column j)."""
    sinks = min(window.sinks, stop)
    recent = max(sinks, start - window.local + 1)
    return torch.cat([torch.arange(sinks, device=device), torch.arange(recent, stop, device=device)])


def sink_query_positions(pos: torch.Tensor, start: int, stop: int, window: AttentionWindow) -> list[torch.Tensor]:
    """For each sink j among the keys up to `stop`, the position (..., rows) the rows' queries
    take against it, the sink at pos[j]: streaming_llm's cache position, lm_infinite's capped
    distance from pos[j]."""
    rows, sinks = pos[..., start:stop], range(min(window.sinks, stop))
    if window.method == "streaming_llm":
        index = torch.arange(start, stop, device=pos.device).clamp(max=window.sinks + window.local - 1)
        return [pos[..., index] for _ in sinks]
    return [pos[..., j : j + 1] + (rows - pos[..., j : j + 1]).clamp(max=window.cap) for j in sinks]


class WindowedPath:
    """Blocks of query rows with the window's mask, and each sink's logit at its remapped
    distance (see the module docstring)."""

    def __init__(self, window: AttentionWindow, pos_enc: PositionalEncoding, pos: torch.Tensor, length: int, budget):
        self.window, self.pos_enc, self.pos, self.length, self.budget = window, pos_enc, pos, length, budget
        self.rotary = mechanism_of(pos_enc) == "rotary"

    def mask(self, start: int, stop: int, keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The block's additive mask over the given keys (1 or B, H or 1, rows, keys): the
        encoding's bias, its sink columns at the remapped positions, and -inf where the window
        (causal too) hides a key."""
        pos = self.pos
        bias = self.pos_enc.bias(pos[..., start:stop], pos[..., keys])
        if bias is None:
            mask = torch.zeros(stop - start, keys.numel(), dtype=dtype, device=pos.device)
        else:
            mask = sdpa_mask(bias, dtype).clone()
            for j, q_pos in enumerate(sink_query_positions(pos, start, stop, self.window)):
                column = self.pos_enc.bias(q_pos, pos[..., j : j + 1])  # (..., H, rows, 1)
                mask[..., j : j + 1] = column.to(dtype).reshape(mask[..., j : j + 1].shape)
        mask = mask.masked_fill(~visible(start, keys, stop, self.window), float("-inf"))
        return mask if mask.dim() == 4 else mask.unsqueeze(0)

    def sink_logits(self, q_rows, k_past, start: int, stop: int) -> torch.Tensor:
        """The block's logits with the sink columns replaced: each sink's logit is the query
        rotated by (remapped position - its own), times the sink's key as rotated."""
        logits = q_rows @ k_past.transpose(-2, -1)
        own = self.pos[..., start:stop]
        for j, q_pos in enumerate(sink_query_positions(self.pos, start, stop, self.window)):
            shift = self.pos_enc.prepare(q_pos - own, self.length)
            shifted, _ = self.pos_enc.rotate(q_rows, q_rows, shift)
            logits[..., j] = (shifted * k_past[..., j : j + 1, :]).sum(-1)
        return logits

    def __call__(self, q, k, v, scale: float, dropout_p: float, terms: LayerTerms = NO_TERMS) -> torch.Tensor:
        B, H, T, hd = q.shape
        if self.rotary and self.window.sinks:
            terms = replace(terms, logits=self.sink_logits)
        # FoX's and CoPE's terms are laid out over every key up to the block's last row
        every_key = terms.input_bias is not None or terms.contextual is not None
        if every_key:
            blocks = row_blocks(T, B * H * T, self.budget)
        else:
            # at most `local` rows a block, so that a block sees at most sinks + 2 local keys
            seen = self.window.sinks + 2 * self.window.local
            step = min(self.window.local, rows_per_block(B * H * seen, self.budget))
            blocks = [(start, min(T, start + step)) for start in range(0, T, step)]
        parts = []
        for start, stop in blocks:
            keys = torch.arange(stop, device=q.device) if every_key else block_keys(start, stop, self.window, q.device)
            mask = self.mask(start, stop, keys, q.dtype)
            q_rows, k_seen, v_seen = q[:, :, start:stop], k[:, :, keys], v[:, :, keys]
            parts.append(attend_block(q_rows, k_seen, v_seen, scale, dropout_p, mask, terms, start, stop))
        return torch.cat(parts, dim=2)
