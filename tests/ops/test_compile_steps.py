"""chunk_miras(compile_steps=True): each chunk's step under torch.compile computes the same function as eager, output,
final state and every gradient, across a partial head chunk (a state with offset), full chunks and a partial tail."""

from __future__ import annotations

import pytest
import torch

import miras.ops.chunk as chunk_op
from miras import presets
from miras.ops import MirasState, chunk_miras
from tests.ops.inputs import make_inputs

# After 5 tokens: the head chunk's last 3, 3 full chunks, a tail of 5. The full chunks go in runs of RUN chunks per
# compiled call: 2 gives a run of 2 and a run of 1; 1 calls the one-chunk graph three times in a row (a version that
# computed the coefficients inside the compiled run got every gradient but q's wrong in that case only: torch's
# donated buffers, miras/ops/torch_workarounds.py).
CHUNK, T, FIRST = 8, 3 + 3 * 8 + 5, 5


def _run(spec, compile_steps: bool, dtype: torch.dtype) -> list:
    q, k, v, gates, state, _ = make_inputs(spec, T=T)  # float64 draws, the same values in either dtype

    def leaf(x):
        return None if x is None else x.to(dtype).requires_grad_()

    q, k, v = leaf(q), leaf(k), leaf(v)
    gates = {name: leaf(g) for name, g in gates.items()}
    state = MirasState(
        tuple(map(leaf, state.memory)), None if state.momentum is None else tuple(map(leaf, state.momentum))
    )
    leaves = [x for x in (q, k, v, *gates.values(), *state.memory, *(state.momentum or ())) if x is not None]

    def call(window: slice, initial_state, **kwargs):
        return chunk_miras(
            q[:, window],
            k[:, window],
            v[:, window],
            gates["eta"][:, window],
            None if gates["alpha"] is None else gates["alpha"][:, window],
            spec=spec,
            chunk_size=CHUNK,
            momentum=None if gates["momentum"] is None else gates["momentum"][:, window],
            delta=None if gates["delta"] is None else gates["delta"][:, window],
            initial_state=initial_state,
            output_final_state=True,
            **kwargs,
        )

    _, mid = call(slice(0, FIRST), state)
    assert mid.offset == FIRST
    o, final = call(slice(FIRST, None), mid, compile_steps=compile_steps)
    assert final.offset == (T - FIRST - (CHUNK - FIRST)) % CHUNK
    cotangent = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    grads = torch.autograd.grad(o, leaves, cotangent, allow_unused=True)
    return [o, *final.memory, *grads]


@pytest.mark.parametrize("run", [2, 1])
@pytest.mark.parametrize(
    "preset",
    [
        "moneta",
        pytest.param("titans", marks=pytest.mark.slow),
        pytest.param("yaad", marks=pytest.mark.slow),
        pytest.param("memora", marks=pytest.mark.slow),
    ],
)
def test_compiled_steps_are_the_eager_op(preset, run, monkeypatch):
    """In float32 against the float64 eager op: the compiled steps are as accurate as the eager ones (inductor
    reorders sums, so not bit-equal; measured 4e-6 to 8e-5 relative for both)."""
    monkeypatch.setattr(chunk_op, "COMPILED_RUN", run)
    spec = presets.get(preset)
    exact = _run(spec, False, torch.float64)
    errors = {}
    for compiled in (False, True):
        got = _run(spec, compiled, torch.float32)
        assert [x is None for x in got] == [y is None for y in exact]
        errors[compiled] = max(
            float((x.detach().double() - y.detach()).abs().max() / y.detach().abs().max().clamp_min(1e-12))
            for x, y in zip(got, exact)
            if y is not None
        )
    assert errors[False] < 1e-4 and errors[True] <= 4 * errors[False] + 2e-5, errors
