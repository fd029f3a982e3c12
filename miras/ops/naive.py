"""naive_recurrent_miras: the obviously-correct reference. A Python loop over tokens; every per-token gradient comes
from autograd (torch.func.vjp) through the memory, never from hand-derived formulas, so it checks the fast path.

Axis legend: B batch, T time, H heads, K key dim, V value dim. Semantics: miras/ops/README.md.
"""

from __future__ import annotations

import torch

from miras.memory.architecture import memory_forward
from miras.memory.bias import upstream
from miras.memory.retention import retention_map, retention_slope, retention_weights, slope_centers_rows
from miras.ops.precision import compute_dtype, without_autocast
from miras.ops.state import MirasState, Weights, check_inputs, resolve_state
from miras.spec import MemorySpec


def _gradient(
    spec: MemorySpec, weights: Weights, k: torch.Tensor, v: torch.Tensor, delta: torch.Tensor | None
) -> Weights:
    """∇_W ℓ(W; k, v) for one token per batch element and head. k [B, H, K], v [B, H, V], delta [B, H]."""
    pred, vjp = torch.func.vjp(lambda *ws: memory_forward(spec, ws, k.unsqueeze(-2)), *weights)  # [B, H, 1, V]
    u = upstream(spec, pred, v.unsqueeze(-2), None if delta is None else delta.unsqueeze(-1))
    return vjp(u)


def _scale(gate: torch.Tensor, ws: Weights) -> Weights:
    """gate [B, H] times every weight [B, H, out, in]."""
    return tuple(gate[..., None, None] * w for w in ws)


def _add(a: Weights, b: Weights) -> Weights:
    return tuple(x + y for x, y in zip(a, b))


@without_autocast
def recurrent_step(
    spec: MemorySpec,
    state: MirasState,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor | None,
    momentum: torch.Tensor | None,
    delta: torch.Tensor | None,
    chunk_size: int,
) -> tuple[torch.Tensor, MirasState]:
    """One token: q, k [B, H, K], v [B, H, V], gates [B, H]. Returns (o [B, H, V], next state).

    With gradients="per_token" every token starts a chunk of its own (chunk_size does not matter) and the state's
    offset stays 0."""
    if spec.per_token:
        chunk_size = 1
    a = torch.ones_like(eta) if alpha is None else alpha
    start = state.offset == 0
    anchor = retention_map(spec, state.memory) if start else state.anchor
    if spec.gradient_at == "retained":  # the anchor decayed by every α since the chunk started
        anchor = _scale(a, anchor)
    g = _gradient(spec, anchor, k, v, delta)
    if spec.algorithm == "momentum":
        mom = _add(_scale(momentum, state.momentum), _scale(-eta, g))
        increment = mom
    else:
        mom = None
        increment = _scale(-eta, g)
    memory = _add(_scale(a, state.memory), increment)
    slope = state.slope
    if not spec.nonlinear_retention:
        read = memory
    elif start:  # the lag token: the exact non-linear step; it anchors the rest of the chunk
        read = retention_map(spec, memory)
        anchor = read
        slope = (
            retention_slope(spec, memory, retention_weights(spec, memory)) if spec.inchunk_steps == "scaled" else None
        )
    else:  # inside the chunk the read weights evolve linearly from the lag token's (scaled by φ's slope there)
        if slope is not None:
            if slope_centers_rows(spec):
                increment = tuple(w - w.mean(-1, keepdim=True) for w in increment)
            increment = tuple(s * w for s, w in zip(slope, increment))
        read = _add(_scale(a, state.read), increment)
    o = memory_forward(spec, read, q.unsqueeze(-2)).squeeze(-2)
    offset = (state.offset + 1) % chunk_size
    if offset == 0:
        return o, MirasState(memory, mom)
    return o, MirasState(memory, mom, offset, anchor, read if spec.nonlinear_retention else None, slope)


@without_autocast
def naive_recurrent_miras(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor | None,
    *,
    spec: MemorySpec,
    chunk_size: int = 64,
    momentum: torch.Tensor | None = None,
    delta: torch.Tensor | None = None,
    initial_state: MirasState | Weights | torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, MirasState | None]:
    """Reference Miras memory op. Same contract as `chunk_miras`.

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        eta: [B, T, H] inner learning rate (> 0); alpha: [B, T, H] retention in [0, 1] (None for retention="none");
        momentum: [B, T, H] θ in [0, 1] (algorithm="momentum"); delta: [B, T, H] Huber δ > 0 (bias="huber").
        initial_state: None (zeros, linear memory only), the memory weights, or a MirasState. A state left
            mid-chunk (offset > 0) fills its chunk up to chunk_size tokens: pass the chunk_size that left it (the
            state does not record it).
    Returns:
        o [B, T, H, V] in q's dtype, and the final MirasState if output_final_state.
    """
    check_inputs(spec, q, k, v, eta, alpha, momentum, delta, chunk_size)
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    state = resolve_state(spec, initial_state, B, H, K, v.shape[-1], dt, q.device, chunk_size)
    gates = [None if g is None else g.to(dt) for g in (eta, alpha, momentum, delta)]
    outputs = []
    for t in range(T):
        eta_t, alpha_t, mom_t, delta_t = (None if g is None else g[:, t] for g in gates)
        o, state = recurrent_step(
            spec, state, q[:, t].to(dt), k[:, t].to(dt), v[:, t].to(dt), eta_t, alpha_t, mom_t, delta_t, chunk_size
        )
        outputs.append(o)
    o = torch.stack(outputs, dim=1).to(q.dtype)  # [B, T, H, V]
    return o, (state if output_final_state else None)
