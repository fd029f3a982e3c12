"""Registration of model_type "miras" with transformers' AutoConfig, AutoModel and AutoModelForCausalLM.

`import miras` calls `install()`, which must not import transformers: that would add seconds to every `import miras`
(the CLI, training) for an optional extra. Instead it registers at once if transformers' Auto modules are already
loaded, and otherwise leaves an import hook that registers right after each of them loads
(`_miras_import_hooks.after_import`). So `import miras; AutoModelForCausalLM.from_pretrained(hf_dir)` works in either
import order, and without transformers installed the hook never fires.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path


def _import_hooks():
    """`_miras_import_hooks`: a top-level module of this distribution (plugins/ in the source tree), importable
    without importing torch once miras is installed. From a checkout on PYTHONPATH that is not installed (`PYTHONPATH=.
    python -m miras ...` on a machine whose PyTorch must stay), the source tree's copy, under the same name."""
    try:
        import _miras_import_hooks
    except ModuleNotFoundError:
        path = Path(__file__).resolve().parents[2] / "plugins" / "_miras_import_hooks.py"
        if not path.is_file():
            raise ModuleNotFoundError(f"_miras_import_hooks is neither installed nor at {path}: reinstall miras "
                                      "(pip install -e .)") from None
        spec = importlib.util.spec_from_file_location("_miras_import_hooks", path)
        _miras_import_hooks = importlib.util.module_from_spec(spec)
        sys.modules["_miras_import_hooks"] = _miras_import_hooks
        spec.loader.exec_module(_miras_import_hooks)
    return _miras_import_hooks


after_import = _import_hooks().after_import

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


def install() -> None:
    """Register now with the Auto modules already imported, and right after the import of the others."""
    after_import(CONFIG_AUTO, lambda: _run(register_config))
    after_import(MODELING_AUTO, lambda: _run(register_models))


def _run(action) -> None:
    # An incompatible transformers (the extra pins miras[hf] to one version) must not break the caller's import of
    # transformers: say why model_type "miras" stays unknown instead.
    try:
        action()
    except ImportError as e:
        warnings.warn(f"miras: the transformers integration could not load ({e}); model_type 'miras' is not "
                      "registered with the Auto classes")
