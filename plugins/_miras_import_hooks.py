"""Run code right after a module is imported, and the start-up hook that registers "miras" with lm-eval.

This module sits at the top of site-packages (the wheel force-includes it, see pyproject.toml) so that
`miras.pth` can import it at every interpreter start without importing `miras` itself, which would import torch
and add a second to every Python process. It imports nothing beyond `sys` at start-up (`typing` or `importlib.abc`
would cost 10-60 ms per process).

Editable installs copy this file into site-packages: after editing it, reinstall (`pip install -e .`).
"""

from __future__ import annotations

import sys

LMEVAL_MODELS = "lm_eval.models"
LMEVAL_MODEL_TARGET = "miras.lmeval.model:MirasEvalLM"
LMEVAL_HF = "lm_eval.models.huggingface"  # lm-eval's `--model hf` (HFLM), loaded only when asked for


def after_import(name: str, action) -> None:
    """Call `action()` once module `name` has executed: now if it already has, else right after its import."""
    if name in sys.modules:
        action()
        return
    hook = next((f for f in sys.meta_path if isinstance(f, _AfterImport)), None)
    if hook is None:
        hook = _AfterImport()
        sys.meta_path.insert(0, hook)
    hook.actions.setdefault(name, []).append(action)


def register_lmeval_model() -> None:
    """lm-eval's model registry learns "miras" as a lazy "module:object" placeholder, which it imports only when
    `--model miras` is asked for (and which `@register_model("miras")` then upgrades in place). lm-eval 0.4.13 has
    no plugin discovery (upstream #1621), so without this only `python -m miras.lmeval` would know the model."""
    # An lm-eval whose registry differs (the extra pins miras[eval] to one version) must not break lm-eval's import:
    # say why the model stays unknown instead.
    try:
        from lm_eval.api.registry import model_registry

        if "miras" not in model_registry:
            model_registry.register("miras", target=LMEVAL_MODEL_TARGET)
    except Exception as e:  # noqa: BLE001 (any failure here is reported, never raised into lm-eval)
        import warnings

        warnings.warn(f"miras: could not register the lm-eval model 'miras' ({type(e).__name__}: {e})")


def register_with_transformers() -> None:
    """lm-eval's `--model hf` loads a Hugging Face folder through transformers' Auto classes, which know model_type
    "miras" once miras is imported (miras/hf/auto.py): import it (~20 ms once torch is loaded, which HFLM does)."""
    try:
        import miras  # noqa: F401
    except Exception as e:  # noqa: BLE001 (reported, never raised into lm-eval)
        import warnings

        warnings.warn(f"miras: could not register model_type 'miras' with transformers ({type(e).__name__}: {e})")


def install_lmeval() -> None:
    """What miras.pth runs at interpreter start: costs one dictionary lookup per later import until lm-eval loads."""
    after_import(LMEVAL_MODELS, register_lmeval_model)
    after_import(LMEVAL_HF, register_with_transformers)


class _AfterImport:
    """A meta path finder (duck-typed: importlib.abc would import importlib.resources, tempfile and more, 60 ms at
    every interpreter start). It finds nothing itself: for a watched module it asks the other finders for the spec and wraps the loader's
    exec_module, so that the actions run right after the module has executed."""

    def __init__(self) -> None:
        self.actions: dict[str, list] = {}  # module name -> functions of no arguments

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.actions:
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

        def exec_then_act(module):
            exec_module(module)
            actions = self.actions.pop(fullname, [])
            if not self.actions and self in sys.meta_path:
                sys.meta_path.remove(self)
            for action in actions:
                action()

        # On the loader instance (one per module), so the loader stays what it was for inspect and friends.
        spec.loader.exec_module = exec_then_act
        return spec
