"""Evaluation: metrics (`miras.metrics`) and figures (`miras.plots`, imported on demand: it loads
matplotlib)."""

from miras.metrics import (
    NLLAccumulator,
    bits_per_byte,
    per_position_loss,
    perplexity,
    token_accuracy,
    token_nll,
)

__all__ = ["NLLAccumulator", "bits_per_byte", "per_position_loss", "perplexity", "token_accuracy", "token_nll"]
