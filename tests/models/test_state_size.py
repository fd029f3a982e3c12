"""state_size is the number of floats the model's decode cache really holds for one sequence."""

from __future__ import annotations

import pytest
import torch

from miras.config import ModelConfig
from miras.layers import KVCache
from miras.models import MirasLM, state_size


def _cache_floats(cache) -> int:
    total = 0
    for layer in cache.layers:
        if isinstance(layer, KVCache):
            total += layer.key.numel() + layer.value.numel()
            continue
        assert layer.state.offset == 0 and layer.state.anchor is None  # at a chunk boundary
        tensors = [*layer.state.memory, *(layer.state.momentum or ()), layer.conv]
        total += sum(t.numel() for t in tensors)
    return total


@pytest.mark.parametrize(
    "fields",
    [
        dict(preset="transformer"),
        dict(preset="gated_deltanet"),
        dict(preset="moneta"),
        dict(preset="titans"),  # momentum doubles the memory
        dict(preset="memora"),
        dict(preset="yaad", hybrid_attention_every=2, attention_window=5),  # sliding window: the last 4 tokens
    ],
    ids=lambda f: f["preset"] + ("-hybrid" if "hybrid_attention_every" in f else ""),
)
def test_state_size_counts_the_cache(fields):
    config = ModelConfig(
        hidden_size=16, num_hidden_layers=2, num_heads=2, vocab_size=32, chunk_size=4, gate_rank=4, **fields
    )
    torch.manual_seed(0)
    model = MirasLM(config)
    ids = torch.randint(0, 32, (1, 8))
    with torch.no_grad():
        cache = model(ids, cache=model.allocate_cache(1)).cache
    assert state_size(config, 8) == _cache_floats(cache)


def test_state_size_grows_with_the_sequence_only_for_full_attention():
    attention = ModelConfig(preset="transformer", hidden_size=64, num_heads=1)
    memory = ModelConfig(preset="gated_deltanet", hidden_size=64, num_heads=1)
    assert state_size(attention, 128) == 2 * state_size(attention, 64) == 2 * 2 * 2 * 64 * 64
    assert state_size(memory, 128) == state_size(memory, 64) == 2 * (64 * 64 + 3 * 64 * 3)
    with pytest.raises(ValueError, match="seq_len"):
        state_size(memory, -1)
