"""Miras: sequence layers as associative memories trained at test time."""

from miras import presets
from miras.ops import MirasState, chunk_miras, init_state, naive_recurrent_miras
from miras.presets import gated_deltanet, memora, moneta, titans, yaad
from miras.spec import MemorySpec

__all__ = [
    "MemorySpec",
    "MirasState",
    "chunk_miras",
    "gated_deltanet",
    "init_state",
    "memora",
    "moneta",
    "naive_recurrent_miras",
    "presets",
    "titans",
    "yaad",
]
