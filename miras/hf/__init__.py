"""Hugging Face transformers integration (the optional extra `miras[hf]`); usage and design in README.md here.

The names below load on first use, so that importing this package does not import transformers (`is_hf_folder`,
which training uses, never does). `import miras.hf.auto` registers model_type "miras" with the Auto classes.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

MODEL_TYPE = "miras"

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


def is_hf_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a Hugging Face folder of a Miras model: its config.json has model_type "miras" (a run
    folder's config.json has none)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and data.get("model_type") == MODEL_TYPE


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'miras.hf' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
