"""Training: the LightningModule around the GPT (module.py), its losses and its optimizer."""

from poslab.training.module import DivergedError, LitGPT

__all__ = ["DivergedError", "LitGPT"]
