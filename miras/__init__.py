"""Miras: sequence layers as associative memories trained at test time."""

from miras import presets
from miras.config import ModelConfig
from miras.layers import Attention, MirasLayer
from miras.models import LMOutput, MirasCache, MirasLM
from miras.ops import MirasState, chunk_miras, init_state, naive_recurrent_miras
from miras.presets import gated_deltanet, memora, moneta, titans, yaad
from miras.spec import MemorySpec

# transformers (the optional extra miras[hf]) learns model_type "miras" when its Auto classes load; importing miras
# never imports transformers itself, which would add seconds (miras/hf/auto.py).
from miras.hf.auto import install as _install_hf_auto

_install_hf_auto()

__all__ = [
    "Attention",
    "LMOutput",
    "MemorySpec",
    "MirasCache",
    "MirasLM",
    "MirasLayer",
    "MirasState",
    "ModelConfig",
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
