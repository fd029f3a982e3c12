"""Registration of model_type "miras" with transformers' AutoConfig, AutoModel and AutoModelForCausalLM.

`import miras` calls `install()`, which must not import transformers: that would add seconds to every `import miras`
(the CLI, training) for an optional extra. Instead it registers at once if transformers' Auto modules are already
loaded, and otherwise leaves an import hook that registers right after each of them loads. So
`import miras; AutoModelForCausalLM.from_pretrained(hf_dir)` works in either import order, and without transformers
installed the hook never fires.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
MODELING_AUTO = "transformers.models.auto.modeling_auto"


def register_config() -> None:
    """AutoConfig learns "miras" (idempotent)."""
    from transformers import AutoConfig

    from miras.hf import MODEL_TYPE
    from miras.hf.configuration import MirasConfig

    AutoConfig.register(MODEL_TYPE, MirasConfig, exist_ok=True)


def register_models() -> None:
    """AutoModel and AutoModelForCausalLM learn MirasConfig's models (idempotent)."""
    from transformers import AutoModel, AutoModelForCausalLM

    from miras.hf.configuration import MirasConfig
    from miras.hf.modeling import MirasForCausalLM, MirasModel

    AutoModel.register(MirasConfig, MirasModel, exist_ok=True)
    AutoModelForCausalLM.register(MirasConfig, MirasForCausalLM, exist_ok=True)


def register() -> None:
    """Register with all three Auto classes now (imports transformers)."""
    register_config()
    register_models()


_REGISTER = {CONFIG_AUTO: register_config, MODELING_AUTO: register_models}


def install() -> None:
    """Register now with the Auto modules already imported, and hook the import of the others."""
    pending = []
    for name, action in _REGISTER.items():
        if name in sys.modules:
            _run(action)
        else:
            pending.append(name)
    if pending and not any(isinstance(f, _AutoImportHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoImportHook(pending))


def _run(action) -> None:
    # An incompatible transformers (the extra pins miras[hf] to one version) must not break the caller's import of
    # transformers: say why model_type "miras" stays unknown instead.
    try:
        action()
    except ImportError as e:
        warnings.warn(f"miras: the transformers integration could not load ({e}); model_type 'miras' is not "
                      "registered with the Auto classes")


class _AutoImportHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for the watched modules it asks the other finders for the spec and wraps the loader's
    exec_module, so that registration runs right after the module has executed."""

    def __init__(self, names: list[str]) -> None:
        self.pending = set(names)

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            self.pending.discard(fullname)
            if not self.pending:
                sys.meta_path.remove(self)
            _run(_REGISTER[fullname])

        # On the loader instance (one per module), so the loader stays what it was for inspect and friends.
        spec.loader.exec_module = exec_then_register
        return spec
