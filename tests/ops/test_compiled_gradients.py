"""torch.compile of the op gives eager's gradients: with torch's donated buffers on, it did not (a compiled backward
overwrote a saved tensor while a view of it was still to be read; miras/ops/torch_workarounds.py). miras compiles with
them off (compile_keeping_saved_tensors), and only there: the torch setting is the same before and after."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from miras import presets
from miras.ops import chunk_miras
from miras.ops.torch_workarounds import compile_keeping_saved_tensors
from tests.ops.inputs import make_inputs


def _relative_errors(got: list[torch.Tensor], want: list[torch.Tensor]) -> list[float]:
    return [float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, want)]


def _saved_tensor_and_its_view(e: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The smallest function found that shows the bug: c and its view c[0] are both saved for backward, and the
    backward of the product with c (run last) needs c after the kernel that could take c's memory."""
    c = F.pad(e.unsqueeze(-1) * e.unsqueeze(-2), (1, 0, 1, 0))  # [1, 9, 9]
    h = torch.tanh(c.unbind(0)[0] @ x @ w)
    s = ((x @ x.transpose(-1, -2)).unsqueeze(0) * c)[0]
    return (s @ x).sum(-1).square().sum() + h.square().sum()


def test_a_saved_tensor_and_its_view_survive_the_compiled_backward():
    """With torch 2.13's default (donated buffers on) x's gradient came out off by ~200."""
    donated_at_start = torch._functorch.config.donated_buffer
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in ((1, 8), (9, 4), (4, 4))]
    grads = {}
    for label, fn in (
        ("eager", _saved_tensor_and_its_view),
        ("compiled", compile_keeping_saved_tensors(_saved_tensor_and_its_view, dynamic=False)),
    ):
        leaves = [x.clone().requires_grad_() for x in inputs]
        grads[label] = torch.autograd.grad(fn(*leaves), leaves)
    assert max(_relative_errors(grads["compiled"], grads["eager"])) < 1e-10
    assert torch._functorch.config.donated_buffer == donated_at_start


@pytest.mark.parametrize("preset", ["moneta", pytest.param("memora", marks=pytest.mark.slow)])
def test_compiled_op_equals_eager(preset):
    """torch.compile(chunk_miras, fullgraph=True) over three full chunks, float64: the output and
    every gradient. q's and k's gradients were off by up to 1e3 (relative) with donated buffers on."""
    spec = presets.get(preset)
    q, k, v, gates, state, _ = make_inputs(spec, T=24)
    tensors = {"q": q, "k": k, "v": v, **{name: g for name, g in gates.items() if g is not None}}

    def op(q, k, v, eta, alpha=None, momentum=None, delta=None, memory=None):
        return chunk_miras(
            q, k, v, eta, alpha, spec=spec, chunk_size=8, momentum=momentum, delta=delta, initial_state=memory
        )[0]

    results = []
    for fn in (op, compile_keeping_saved_tensors(op, fullgraph=True, dynamic=False)):
        leaves = {name: x.detach().clone().requires_grad_() for name, x in tensors.items()}
        memory = tuple(m.detach().clone().requires_grad_() for m in state.memory)
        o = fn(**leaves, memory=memory)
        cotangent = torch.randn(o.shape, generator=torch.Generator().manual_seed(1), dtype=o.dtype)
        results.append([o, *torch.autograd.grad(o, [*leaves.values(), *memory], cotangent)])
    errors = _relative_errors(*reversed(results))
    assert max(errors) < 1e-10, dict(zip(["output", *tensors, "memory 0", "memory 1"], errors))
