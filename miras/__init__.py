"""Miras: sequence layers as associative memories trained at test time.

Importing miras runs no code outside the package and changes no torch setting (tests/test_import_side_effects.py):
transformers' Auto classes learn model_type "miras" by `import miras.hf.auto`, and the workaround for torch's donated
buffers is scoped to the calls that compile (miras/ops/torch_workarounds.py).
"""

from miras import presets
from miras.config import ModelConfig
from miras.layers import Attention, MirasLayer
from miras.models import LMOutput, MirasCache, MirasLM
from miras.ops import MirasState, chunk_miras, init_state, naive_recurrent_miras
from miras.presets import gated_deltanet, memora, moneta, titans, yaad
from miras.spec import MemorySpec

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
