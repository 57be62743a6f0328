"""Positional encodings: one class per scheme, all implementing the hooks of `base.PositionalEncoding`."""

from poslab.encodings.absolute import Learned, Sinusoidal
from poslab.encodings.base import (
    MECHANISMS,
    InputBias,
    LengthNotSupportedError,
    NoPE,
    PositionalEncoding,
    family_of,
    mechanism_of,
    span,
)
from poslab.encodings.bias import FIRE, KERPLE, ALiBi, T5Bias, alibi_slopes, t5_relative_bucket
from poslab.encodings.data_dependent import CoPE, FoX
from poslab.encodings.interleaved import IRoPE
from poslab.encodings.remapped import LeakyReRoPE, RemappedRoPE, ReRoPE, SelfExtend
from poslab.encodings.rotary import (
    RoPE,
    RoPELlama3,
    RoPELongRoPE,
    RoPENTK,
    RoPEPartial,
    RoPEPositionInterpolation,
    RoPEYaRN,
    ScaledRoPE,
    XPos,
)

__all__ = [
    "FIRE",
    "KERPLE",
    "ALiBi",
    "CoPE",
    "FoX",
    "IRoPE",
    "InputBias",
    "Learned",
    "LeakyReRoPE",
    "LengthNotSupportedError",
    "NoPE",
    "PositionalEncoding",
    "ReRoPE",
    "RemappedRoPE",
    "RoPE",
    "RoPELlama3",
    "RoPELongRoPE",
    "RoPENTK",
    "RoPEPartial",
    "RoPEPositionInterpolation",
    "RoPEYaRN",
    "ScaledRoPE",
    "SelfExtend",
    "Sinusoidal",
    "T5Bias",
    "XPos",
    "alibi_slopes",
    "MECHANISMS",
    "family_of",
    "mechanism_of",
    "span",
    "t5_relative_bucket",
]
