"""`MirasCache`: a MirasLM's decode state, one entry per block in layer order.

Each layer owns its entry's type: `MirasLayerCache` (memory state, conv history, position: constant size) or
`KVCache` (keys and values: the last window - 1 tokens for sliding-window attention, every token for full
attention). Caches are immutable: every call returns a new one, so a prefix can be reused or branched.
"""

from __future__ import annotations

from dataclasses import dataclass

from miras.config import ModelConfig
from miras.layers import KVCache, MirasLayerCache
from miras.memory.architecture import weight_shapes

LayerCache = MirasLayerCache | KVCache


@dataclass(frozen=True)
class MirasCache:
    layers: tuple[LayerCache, ...]

    @property
    def position(self) -> int:
        """Tokens consumed so far."""
        return self.layers[0].position

    def detach(self) -> "MirasCache":
        """The same cache cut from the autograd graph, for truncated backpropagation through time across segments."""
        return MirasCache(tuple(layer.detach() for layer in self.layers))


def state_size(config: ModelConfig, seq_len: int) -> int:
    """Floats a MirasLM(config) carries for one sequence after `seq_len` tokens, at a chunk boundary: its decode state,
    the size zoology plots recall against. Per Miras block: the memory's weights (W, or the accumulator A of the
    non-linear retentions), the momentum S of algorithm "momentum", and the short conv's history of q|k|v inputs; per
    attention block: the keys and values it keeps (every token for full attention, the last window - 1 for
    sliding-window attention). Between chunk boundaries the op keeps the unfinished chunk's anchor too (MirasState),
    which is not counted: it is the chunked computation's, not the model's."""
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    H, D = config.num_heads, config.head_dim
    total = 0
    for layer_idx in range(config.num_hidden_layers):
        if config.is_attention_layer(layer_idx):
            span = config.attention_span
            kept = seq_len if span is None else min(seq_len, span - 1)
            total += 2 * H * D * kept
            continue
        spec = config.memory_spec
        memory = H * sum(o * i for o, i in weight_shapes(spec, D, D))
        total += memory * (2 if spec.algorithm == "momentum" else 1) + 3 * H * D * (config.conv_size - 1)
    return total
