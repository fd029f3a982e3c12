"""Weight-decay exemptions come from marks the modules put on their parameters (miras/layers/weight_decay.py); they
exempt exactly what the trainer's earlier rule did (gates, the learned initial memory, vectors)."""

import pytest

from miras.config import TRANSFORMER, ModelConfig
from miras.layers.miras_layer import Gate
from miras.models import MirasLM
from miras.presets import PRESETS
from miras.train.optim import exempt_names, param_groups


def _earlier_rule(model) -> set[str]:
    gates = {id(p) for m in model.modules() if isinstance(m, Gate) for p in m.parameters()}
    return {name for name, p in model.named_parameters() if p.ndim < 2 or id(p) in gates or "memory_init" in name}


@pytest.mark.parametrize("preset", [*PRESETS, TRANSFORMER])
def test_exempt_names(preset):
    model = MirasLM(
        ModelConfig.from_size("tiny", preset=preset, vocab_size=300, hidden_size=32, num_heads=2, num_hidden_layers=2)
    )
    assert exempt_names(model) == _earlier_rule(model)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
