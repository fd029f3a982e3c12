"""`MirasCache`: a MirasLM's decode state, one entry per block in layer order.

Each layer owns its entry's type: `MirasLayerCache` (memory state, conv history, position: constant size) or
`KVCache` (keys and values: the last window - 1 tokens for sliding-window attention, every token for full
attention). Caches are immutable: every call returns a new one, so a prefix can be reused or branched.
"""

from __future__ import annotations

from dataclasses import dataclass

from miras.layers import KVCache, MirasLayerCache

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
