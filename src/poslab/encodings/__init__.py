"""Positional encodings: one class per scheme, all implementing the hooks of `base.PositionalEncoding`."""

from poslab.encodings.absolute import Learned, Sinusoidal
from poslab.encodings.base import LengthNotSupportedError, NoPE, PositionalEncoding
from poslab.encodings.bias import ALiBi, alibi_slopes
from poslab.encodings.rotary import RoPE, RoPEPositionInterpolation

__all__ = [
    "ALiBi",
    "Learned",
    "LengthNotSupportedError",
    "NoPE",
    "PositionalEncoding",
    "RoPE",
    "RoPEPositionInterpolation",
    "Sinusoidal",
    "alibi_slopes",
]
