"""Inside a bf16 autocast region the memory op computes exactly what it computes outside one, in float32: output,
final state and every gradient, bit for bit. Autocast would otherwise run its matmuls, those that build the memory
chunk after chunk included, in bf16 (`miras train` autocasts the model on CUDA; see `without_autocast` in
miras/ops/precision.py). CPU autocast covers the same ops as CUDA's."""

from __future__ import annotations

import pytest
import torch

from miras import presets
from miras.models import MirasLM
from miras.ops import chunk_miras, naive_recurrent_miras, recurrent_step
from tests.models.test_lm import VOCAB, _config
from tests.ops.inputs import make_inputs

# Non-linear (lq) and KL retention, momentum, and a linear memory whose full chunks take the grouped path.
PRESETS = ["moneta", "memora", "titans", "gated_deltanet"]
CHUNK, T = 4, 11  # two full chunks and a partial tail


def _bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _run(op, spec, autocast: bool) -> list[torch.Tensor]:
    q, k, v, gates, state, leaves = make_inputs(spec, T=T, dtype=torch.float32, requires_grad=True)
    with _bf16_autocast() if autocast else torch.autocast("cpu", enabled=False):
        o, final = op(
            q,
            k,
            v,
            gates["eta"],
            gates["alpha"],
            spec=spec,
            chunk_size=CHUNK,
            momentum=gates["momentum"],
            delta=gates["delta"],
            initial_state=state,
            output_final_state=True,
        )
    # The backward outside the region, as torch advises and `miras train` does: inside it, autocast would recast the
    # backward's matmuls whatever the forward ran in.
    grads = torch.autograd.grad(o.square().sum(), leaves)
    return [o, *final.memory, *grads]


@pytest.mark.parametrize("op", [chunk_miras, naive_recurrent_miras], ids=["chunk", "naive"])
@pytest.mark.parametrize("preset", PRESETS)
def test_the_op_ignores_autocast(preset, op):
    spec = presets.get(preset)
    plain, autocast = _run(op, spec, False), _run(op, spec, True)
    assert all(x.dtype == torch.float32 for x in autocast)
    for i, (a, b) in enumerate(zip(autocast, plain)):
        assert torch.equal(a, b), f"{preset}: tensor {i} differs under autocast"


def test_recurrent_step_ignores_autocast():
    spec = presets.memora()  # the preset autocast hurt most: its output was 92% off
    q, k, v, gates, state, _ = make_inputs(spec, T=1, dtype=torch.float32)
    args = (q[:, 0], k[:, 0], v[:, 0], gates["eta"][:, 0], gates["alpha"][:, 0], None, None, CHUNK)
    plain_o, plain_state = recurrent_step(spec, state, *args)
    with _bf16_autocast():
        o, after = recurrent_step(spec, state, *args)
    assert torch.equal(o, plain_o)
    assert all(torch.equal(a, b) and a.dtype == torch.float32 for a, b in zip(after.memory, plain_state.memory))


def test_a_model_trains_and_decodes_under_autocast():
    """The dtypes flow through a model in a bf16 autocast region, the way `miras train` runs one on CUDA: the
    projections in bf16, the memory op in float32, its state in float32 across decode steps."""
    torch.manual_seed(0)
    model = MirasLM(_config("memora"))
    ids = torch.randint(0, VOCAB, (2, 9))
    with _bf16_autocast():
        out = model(ids, labels=ids)
    out.loss.backward()
    with _bf16_autocast():
        cache = model(ids[:, :5], cache=model.allocate_cache(2)).cache
        for t in range(5, 9):
            cache = model.step(ids[:, t], cache).cache
    assert torch.isfinite(out.loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    states = [layer.state for layer in cache.layers]
    assert states and all(w.dtype == torch.float32 for state in states for w in state.memory)
