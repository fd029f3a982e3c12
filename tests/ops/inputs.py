"""Random, well-conditioned inputs for the memory op (unit-norm keys and queries, moderate gates)."""

from __future__ import annotations

import torch

from miras.ops import MirasState, init_state
from miras.spec import MemorySpec


def make_inputs(spec: MemorySpec, B=2, T=7, H=2, K=4, V=4, dtype=torch.float64, seed=0, requires_grad=False):
    """q, k, v, gates and an initial state; every tensor is a leaf (requires_grad when asked)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, low=0.0, high=1.0):
        return torch.rand(*shape, generator=g, dtype=dtype) * (high - low) + low

    q = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=g, dtype=dtype), dim=-1)
    v = 0.5 * torch.randn(B, T, H, V, generator=g, dtype=dtype)
    gates = {
        "eta": rand(B, T, H, low=0.005, high=0.05),
        "alpha": None if spec.retention == "none" else rand(B, T, H, low=0.97, high=1.0),
        "momentum": rand(B, T, H, low=0.1, high=0.9) if spec.algorithm == "momentum" else None,
        "delta": rand(B, T, H, low=0.2, high=1.2) if spec.bias == "huber" else None,
    }
    state = init_state(spec, B, H, K, V, generator=g, dtype=dtype)
    memory = tuple(w + 0.3 * torch.randn(w.shape, generator=g, dtype=dtype) for w in state.memory)
    momentum = None
    if state.momentum is not None:
        momentum = tuple(0.1 * torch.randn(w.shape, generator=g, dtype=dtype) for w in state.momentum)
    leaves = [q, k, v, *[x for x in gates.values() if x is not None], *memory, *(momentum or ())]
    for x in leaves:
        x.requires_grad_(requires_grad)
    return q, k, v, gates, MirasState(memory, momentum), leaves


def run_op(fn, spec: MemorySpec, q, k, v, gates: dict, state, chunk_size: int):
    """fn (chunk_miras or naive_recurrent_miras) on make_inputs' tensors, returning the final state too."""
    return fn(
        q,
        k,
        v,
        gates["eta"],
        gates["alpha"],
        spec=spec,
        chunk_size=chunk_size,
        momentum=gates["momentum"],
        delta=gates["delta"],
        initial_state=state,
        output_final_state=True,
    )
