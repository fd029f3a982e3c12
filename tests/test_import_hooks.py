"""_miras_import_hooks: actions run right after a module executes, in either import order, and the start-up hook
(miras.pth) leaves lm-eval's model list knowing "miras" without anyone importing miras."""

import subprocess
import sys

import _miras_import_hooks as hooks


def test_action_runs_right_after_the_module_executes(tmp_path, monkeypatch):
    (tmp_path / "hooked_module_a.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    hooks.after_import("hooked_module_a", lambda: seen.append(sys.modules["hooked_module_a"].VALUE))
    assert seen == []
    import hooked_module_a  # noqa: F401

    assert seen == [42]
    assert not any(isinstance(f, hooks._AfterImport) and "hooked_module_a" in f.actions for f in sys.meta_path)


def test_action_runs_at_once_for_an_imported_module():
    seen = []
    hooks.after_import("json", lambda: seen.append("now"))
    assert seen == ["now"]


def test_lm_eval_knows_miras_at_start_up_without_importing_miras():
    code = (
        "import sys; from lm_eval.api.registry import get_model; import lm_eval.models; "
        "from lm_eval.api.registry import model_registry; "
        "print('miras' in model_registry, 'miras' in sys.modules, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # Registered as a lazy placeholder: neither miras nor torch is imported until `--model miras` is asked for.
    assert done.stdout.split() == ["True", "False", "False"]


def test_lm_evals_hf_model_loads_miras_folders():
    """`lm_eval --model hf --model_args pretrained=HF_DIR`: transformers knows model_type "miras" once lm-eval's HFLM
    is imported, with nobody importing miras."""
    code = ("import sys; from lm_eval.models.huggingface import HFLM; from transformers import CONFIG_MAPPING; "
            "print('miras' in CONFIG_MAPPING, 'miras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]


def test_a_checkout_that_is_not_installed_imports():
    """From a checkout on PYTHONPATH (no miras.pth, no top-level _miras_import_hooks: `PYTHONPATH=. python -m miras`
    on a machine whose PyTorch must stay), `import miras` takes the source tree's plugins/ copy of the hooks."""
    code = ("import sys; sys.modules['_miras_import_hooks'] = None  # as if not installed\n"
            "import miras, _miras_import_hooks; print(_miras_import_hooks.__file__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("plugins/_miras_import_hooks.py")
