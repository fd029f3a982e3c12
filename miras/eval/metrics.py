"""Moved to `miras.metrics` (below the trainer, which uses it); this name is kept for existing imports."""

from miras.metrics import (  # noqa: F401
    NLLAccumulator,
    bits_per_byte,
    per_position_loss,
    perplexity,
    token_accuracy,
    token_nll,
)
