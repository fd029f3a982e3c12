"""A model saved before `MemorySpec.gradients` existed loads with the semantics it was trained with (per-chunk
gradients: the saved spec has no `gradients` field, and absent means the old one)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from miras import MirasLM, ModelConfig
from miras.train.checkpoint import load_model_weights
from miras.train.run_dir import read_config

FOLDER = Path(__file__).parent / "fixtures" / "gated_deltanet_before_per_token"


def _load(**spec_changes) -> MirasLM:
    saved = read_config(FOLDER)["model"]
    assert "gradients" not in saved["spec"]  # the fixture is what the previous code wrote
    saved["spec"] = {**saved["spec"], **spec_changes}
    model = MirasLM(ModelConfig.from_dict(saved)).eval()
    load_model_weights(model, FOLDER)  # a checkpoint folder: its model.safetensors
    return model


def test_old_gated_deltanet_folder_computes_what_it_was_trained_with():
    expected = load_file(FOLDER / "expected.safetensors")
    model = _load()
    assert model.config.memory_spec.gradients == "per_chunk"
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)
    # and the exact rule is a different function on the same weights, so the check above means something
    with torch.no_grad():
        exact = _load(gradients="per_token")(expected["input_ids"]).logits
    assert (exact - expected["logits"]).abs().max() > 1e-3
