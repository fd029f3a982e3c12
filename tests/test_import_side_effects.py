"""`import miras` changes nothing outside the package: no torch setting, no import hook, no transformers; and the
installed distribution puts no start-up code (.pth) or top-level module beside the package in site-packages."""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

# In a fresh interpreter: torch's process-wide settings, and the import system's hooks, before and after `import miras`.
SNAPSHOT = r"""
import json, sys
import torch, torch._dynamo.config, torch._functorch.config


def snapshot():
    configs = {name: {key: repr(value) for key, value in module.get_config_copy().items()}
               for name, module in (("functorch", torch._functorch.config), ("dynamo", torch._dynamo.config))}
    flags = {
        "default_dtype": str(torch.get_default_dtype()),
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn": [torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32],
        "mkldnn": torch.backends.mkldnn.enabled,
        "meta_path": [repr(f) for f in sys.meta_path],
        "path_hooks": [repr(h) for h in sys.path_hooks],
    }
    return {**configs, "flags": flags}


before = snapshot()
import miras
after = snapshot()
print(json.dumps({"changed": {section: {key: [before[section][key], after[section].get(key)]
                                        for key in before[section] if before[section][key] != after[section].get(key)}
                              for section in before},
                  "transformers": "transformers" in sys.modules}))
"""


def test_import_miras_leaves_torch_and_the_import_system_as_they_were():
    done = subprocess.run([sys.executable, "-c", SNAPSHOT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["changed"] == {"functorch": {}, "dynamo": {}, "flags": {}}
    assert not result["transformers"]  # the Auto-class registration is `import miras.hf.auto`, not `import miras`


def test_the_install_adds_no_start_up_code_to_site_packages():
    """No miras .pth file that runs code (an editable install's .pth holds only the source folder's path), and no
    module of miras outside the package (the former _miras_import_hooks)."""
    site = Path(sysconfig.get_paths()["purelib"])
    for pth in site.glob("*.pth"):
        text = pth.read_text(errors="replace")
        if "miras" in pth.name or "miras" in text:
            assert not any(line.lstrip().startswith("import") for line in text.splitlines()), pth
    assert not list(site.glob("_miras*.py")) and not (site / "miras.pth").exists()


def test_import_miras_hf_auto_registers_the_auto_classes():
    code = (
        "import miras.hf.auto; from transformers import CONFIG_MAPPING; "
        "from transformers import AutoModelForCausalLM; from miras.hf import MirasConfig, MirasForCausalLM; "
        "print('miras' in CONFIG_MAPPING, AutoModelForCausalLM.from_config(MirasConfig(num_hidden_layers=1, "
        "hidden_size=16, num_heads=2, vocab_size=32)).__class__ is MirasForCausalLM)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"]
