"""`MirasHFCache`: the transformers `Cache` that `generate()` carries between forwards of a Miras model.

It holds one native `MirasCache` (memory state + conv history per Miras layer, keys/values per attention layer), which
the model replaces after every forward: Miras and sliding-window layers keep a constant-size state, so decoding costs
constant memory per token (full-attention layers keep every key, as any transformer).

transformers' own layer classes (DynamicLayer, LinearAttentionLayer) expect one key/value or recurrent tensor per
layer; a Miras memory state is a tuple of MLP weights, momenta and the progress through the current chunk. So the
base class's per-layer list stays empty and the methods that generate() and users call are overridden here: the
sequence length (generate slices its inputs and positions by it), the batch operations, and the rollback that a
recurrent state cannot do.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.cache_utils import Cache

from miras.layers import KVCache
from miras.models import MirasCache


class MirasHFCache(Cache):
    """The decode state of a MirasForCausalLM; empty (state None) until the first forward fills it."""

    # A Python object tree rebuilt every step: nothing for torch.compile / static-cache code paths to use.
    is_compileable = False
    # Tokens cannot be taken back out of a memory state (generate() asks before deferring its stop check).
    is_croppable = False

    def __init__(self, state: MirasCache | None = None) -> None:
        super().__init__(layers=[])
        self.state = state

    def __repr__(self) -> str:
        return f"MirasHFCache(seq_length={self.get_seq_length()}, batch_size={self.batch_size}, layers={len(self)})"

    def __len__(self) -> int:
        return 0 if self.state is None else len(self.state.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (every layer has seen the same tokens)."""
        return 0 if self.state is None else self.state.position

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1  # no limit: memory states have no sequence axis, attention caches grow or slide

    @property
    def batch_size(self) -> int:
        """Sequences in the state; -1 while empty (transformers' convention)."""
        if self.state is None:
            return -1
        first = self.state.layers[0]
        return (first.key if isinstance(first, KVCache) else first.conv).shape[0]

    def reset(self) -> None:
        self.state = None

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "MirasHFCache cannot be cropped: a memory state has absorbed every token it saw and cannot give tokens "
            "back (so assisted decoding and other rollback-based generation are unsupported)"
        )

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (and reorder) the sequences `indices` of the batch."""
        self._map(lambda t: t.index_select(0, indices.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every sequence `repeats` times in place ([a, b] -> [a, a, b, b] for 2)."""
        self._map(lambda t: t.repeat_interleave(repeats, dim=0))

    def _map(self, fn) -> None:
        # Every tensor of a MirasCache has the batch on dim 0 (states [B, H, out, in], conv [B, C, W-1], keys and
        # values [B, H, L, D]); the ints beside them (positions, chunk offsets) are shared by the whole batch.
        if self.state is not None:
            self.state = _map_tensors(self.state, fn)


def _map_tensors(obj, fn):
    """The same tree of frozen dataclasses / NamedTuples / tuples with `fn` applied to every tensor."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if dataclasses.is_dataclass(obj):
        changes = {f.name: _map_tensors(getattr(obj, f.name), fn) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **changes)
    if isinstance(obj, tuple):
        items = [_map_tensors(item, fn) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj
