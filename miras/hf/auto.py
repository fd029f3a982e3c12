"""Importing this module registers model_type "miras" with transformers' AutoConfig, AutoModel and
AutoModelForCausalLM, as fla's model packages register theirs: `import miras.hf.auto`, then the Auto classes load a
folder from `miras convert to-hf`.

`import miras` does not register: that would import transformers (about 2.5-4 s here, and an optional extra) in every
process that imports miras (the CLI, training), or need a hook into the import system that waits for transformers
to load, code that runs in other packages' imports. `python -m miras.lmeval` imports this module, so its
`--model hf` loads converted folders.
"""

from __future__ import annotations

try:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
except ImportError as e:  # transformers is the optional extra miras[hf]
    raise ImportError(f"miras.hf needs transformers: pip install 'miras[hf]' ({e})") from e

from miras.hf import MODEL_TYPE
from miras.hf.configuration import MirasConfig
from miras.hf.modeling import MirasForCausalLM, MirasModel


def register() -> None:
    """Register with all three Auto classes (idempotent; importing this module already did)."""
    AutoConfig.register(MODEL_TYPE, MirasConfig, exist_ok=True)
    AutoModel.register(MirasConfig, MirasModel, exist_ok=True)
    AutoModelForCausalLM.register(MirasConfig, MirasForCausalLM, exist_ok=True)


register()
