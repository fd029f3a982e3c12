"""Models saved before `MemorySpec.gradients` and `MemorySpec.inchunk_steps` existed load with the semantics they
were trained with: a saved spec without the field means its old value (per-chunk gradients, raw in-chunk steps),
whatever the presets now choose. The folders were written by the previous code (fixtures/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from miras import MirasLM, ModelConfig
from miras.run.checkpoint import load_model_weights
from miras.run.folder import read_config

FIXTURES = Path(__file__).parent / "fixtures"
# folder: (the field it predates, the value it means when absent, the preset's value now)
CASES = {
    "gated_deltanet_before_per_token": ("gradients", "per_chunk", "per_token"),
    "memora_before_inchunk_steps": ("inchunk_steps", "raw", "scaled"),
}


def _load(folder: Path, **spec_changes) -> MirasLM:
    saved = read_config(folder)["model"]
    saved["spec"] = {**saved["spec"], **spec_changes}
    model = MirasLM(ModelConfig.from_dict(saved)).eval()
    load_model_weights(model, folder)  # a checkpoint folder: its model.safetensors
    return model


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_folder_computes_what_it_was_trained_with(name):
    field, old, new = CASES[name]
    folder = FIXTURES / name
    assert field not in read_config(folder)["model"]["spec"]  # the fixture is what the previous code wrote
    expected = load_file(folder / "expected.safetensors")
    model = _load(folder)
    assert getattr(model.config.memory_spec, field) == old
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    # and the new value is a different function on the same weights, so the check above means something
    with torch.no_grad():
        changed = _load(folder, **{field: new})(expected["input_ids"]).logits
    assert (changed - expected["logits"]).abs().max() > 1e-4
