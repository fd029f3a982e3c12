"""Hugging Face transformers integration (the optional extra `miras[hf]`); usage and design in README.md here.

The names below load on first use, so that importing this package does not import transformers (`is_hf_folder`,
from miras.run.folder, never does). `import miras.hf.auto` registers model_type "miras" with the Auto classes.
"""

from __future__ import annotations

import importlib

from miras.run.folder import HF_MODEL_TYPE as MODEL_TYPE  # noqa: F401  (exported, see __all__)
from miras.run.folder import is_hf_folder  # noqa: F401  (exported, see __all__)

_EXPORTS = {
    "MirasConfig": "miras.hf.configuration",
    "MirasHFCache": "miras.hf.cache",
    "MirasPreTrainedModel": "miras.hf.modeling",
    "MirasModel": "miras.hf.modeling",
    "MirasForCausalLM": "miras.hf.modeling",
    "register": "miras.hf.auto",
    "run_to_hf": "miras.hf.convert",
    "hf_to_run": "miras.hf.convert",
    "load_hf": "miras.hf.convert",
}

__all__ = sorted([*_EXPORTS, "MODEL_TYPE", "is_hf_folder"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'miras.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
