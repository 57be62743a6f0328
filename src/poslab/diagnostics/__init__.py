"""Diagnostics that show why an encoding extrapolates or breaks.

- `geometry`: what an encoding does to positions, from its hooks alone (no model): rotary
  wavelengths and the critical dimension, similarity of position m to n, bias reach, where a
  scaling member puts each position.
- `attention`: attention recomputed inside a trained model, with per-layer, per-head statistics
  (entropy, mean distance, mass beyond the training context) at each length.
- `describe`, `plots`: figures, numbers and summary lines from the two.

The console script is `poslab-inspect` (poslab.commands.inspect).
"""
