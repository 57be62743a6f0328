"""poslab: positional encodings of a small GPT, compared on length extrapolation."""

__version__ = "0.1.0"
