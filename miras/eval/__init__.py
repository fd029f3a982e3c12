"""Evaluation: scoring trained models (perplexity, NIAH, MQAR accuracy, recall capacity); it trains none (that is
miras.experiments). The metric primitives are re-exported from `miras.metrics`; figures are `miras.plots` (imported
on demand: it loads matplotlib)."""

from miras.metrics import (
    NLLAccumulator,
    bits_per_byte,
    per_position_loss,
    perplexity,
    token_accuracy,
    token_nll,
)

__all__ = ["NLLAccumulator", "bits_per_byte", "per_position_loss", "perplexity", "token_accuracy", "token_nll"]
