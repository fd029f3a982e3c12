"""chunk_miras: the chunk-parallel fast path. No loop over tokens: a loop over chunks, and inside a chunk closed-form
per-token gradients at the chunk's anchor, a b×b coefficient matrix for the gates, and exact reads of every W_t
through the dual form. Derivation: miras/ops/README.md (sections 2-5).

Axis legend: B batch, H heads, n tokens of a chunk (≤ chunk_size), K key dim, V value dim, o/i a weight's out/in dims.
Tensors are [B, H, n, D] inside; the public layout is [B, T, H, D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from miras.memory.architecture import activation, activation_derivative, memory_forward
from miras.memory.bias import upstream
from miras.memory.retention import retention_map
from miras.ops.state import MirasState, Weights, check_inputs, compute_dtype, resolve_state
from miras.spec import MemorySpec

# α and θ enter in log space; a gate of exactly 0 (a full erase) becomes this instead of log(0) = -inf, whose
# gradient would be NaN. exp(log(1e-30) * 1) is 1e-30: indistinguishable from an erase in the outputs.
_TINY = 1e-30


def _segsum(x: torch.Tensor) -> torch.Tensor:
    """x [..., m] -> [..., m, m] with out[t, j] = sum_{j < l <= t} x_l for j <= t, -inf above the diagonal."""
    m = x.shape[-1]
    xx = x.unsqueeze(-1).expand(*x.shape, m)  # xx[..., l, j] = x_l
    strict = torch.ones(m, m, dtype=torch.bool, device=x.device).tril(-1)
    sums = torch.cumsum(xx.masked_fill(~strict, 0.0), dim=-2)
    return sums.masked_fill(~strict.logical_or(torch.eye(m, dtype=torch.bool, device=x.device)), float("-inf"))


def _decay_products(gate: torch.Tensor) -> torch.Tensor:
    """gate [B, H, n] -> P [B, H, n+1, n+1], P[t, j] = prod_{j < l <= t} gate_l (index 0 is the chunk's base)."""
    logs = torch.log(gate.clamp_min(_TINY))
    return torch.exp(_segsum(F.pad(logs, (1, 0))))


class _Coefficients:
    """The chunk's gate algebra (README section 2): for t, i in 1..n,
    W_t = a_t W_0 + b_t S_0 - sum_{i<=t} C[t, i] g_i   and   S_n = s_n S_0 - sum_i D[i] g_i."""

    def __init__(self, eta: torch.Tensor, alpha: torch.Tensor | None, theta: torch.Tensor | None) -> None:
        n = eta.shape[-1]
        if alpha is None:  # retention "none": every product is 1
            p_alpha = eta.new_ones(*eta.shape[:-1], n + 1, n + 1).tril()
        else:
            p_alpha = _decay_products(alpha)
        self.a = p_alpha[..., 1:, 0]  # [B, H, n]
        if theta is None:
            mixed = p_alpha
            self.b = None
        else:
            p_theta = _decay_products(theta)
            mixed = p_alpha @ p_theta  # sum_m Pα[t, m] Pθ[m, i]
            self.b = mixed[..., 1:, 0] - self.a
            self.s_end = p_theta[..., -1, 0]  # [B, H]
            self.d_end = p_theta[..., -1, 1:] * eta  # [B, H, n]
        self.c = mixed[..., 1:, 1:] * eta.unsqueeze(-2)  # [B, H, n, n], zero above the diagonal


def _layer_norm_stats(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    return (z - mean) * inv_std, inv_std


def _anchor_gradients(
    spec: MemorySpec,
    anchor: Weights,
    k: torch.Tensor,
    v: torch.Tensor,
    delta: torch.Tensor | None,
    gamma: torch.Tensor | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-token gradients at the anchor as outer products: g_{l,i} = deltas[l][i] ⊗ inputs[l][i].

    k [B, H, n, K], v [B, H, n, V], delta/gamma [B, H, n]. gamma (gradient_at="retained") scales the anchor per
    token. Returns inputs[l] [B, H, n, in_l] and deltas[l] [B, H, n, out_l] (the gradient w.r.t. layer l's output).
    """
    inputs, pre = [], []
    x = k
    for layer, w in enumerate(anchor):
        if layer > 0:
            x = activation(spec.mlp_activation, pre[-1])
        inputs.append(x)
        h = x @ w.transpose(-1, -2)  # [B, H, n, out]
        if gamma is not None:
            h = h * gamma.unsqueeze(-1)
        pre.append(h)
    z = pre[-1]
    y = z
    if spec.mlp and spec.mlp_norm == "layernorm":
        y, inv_std = _layer_norm_stats(z, spec.norm_eps)
    if spec.mlp and spec.mlp_residual:
        y = k + y
    u = upstream(spec, y, v, delta)  # [B, H, n, V]
    d = u
    if spec.mlp and spec.mlp_norm == "layernorm":
        zn = y - k if spec.mlp_residual else y
        d = inv_std * (u - u.mean(-1, keepdim=True) - zn * (u * zn).mean(-1, keepdim=True))
    deltas = [d]
    for layer in range(len(anchor) - 1, 0, -1):
        d = (d @ anchor[layer]) * activation_derivative(spec.mlp_activation, pre[layer - 1])
        if gamma is not None:
            d = d * gamma.unsqueeze(-1)
        deltas.append(d)
    deltas.reverse()
    return inputs, deltas


def _dual_read(
    spec: MemorySpec,
    read0: Weights,
    mom0: Weights | None,
    coef: _Coefficients,
    inputs: list[torch.Tensor],
    deltas: list[torch.Tensor],
    q: torch.Tensor,
) -> torch.Tensor:
    """o_t = M_{W_t}(q_t) for every token of the chunk without materializing W_t (README section 3)."""
    x = q
    h = None
    for layer, w in enumerate(read0):
        if layer > 0:
            x = activation(spec.mlp_activation, h)
        h = coef.a.unsqueeze(-1) * (x @ w.transpose(-1, -2))
        if mom0 is not None:
            h = h + coef.b.unsqueeze(-1) * (x @ mom0[layer].transpose(-1, -2))
        scores = (x @ inputs[layer].transpose(-1, -2)) * coef.c  # [B, H, n, n]
        h = h - scores @ deltas[layer]
    y = h
    if spec.mlp and spec.mlp_norm == "layernorm":
        y = F.layer_norm(h, h.shape[-1:], eps=spec.norm_eps)
    if spec.mlp and spec.mlp_residual:
        y = q + y
    return y


def _segment(
    spec: MemorySpec,
    anchor: Weights,
    read0: Weights | None,
    mem0: Weights,
    mom0: Weights | None,
    q: torch.Tensor | None,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor | None,
    theta: torch.Tensor | None,
    delta: torch.Tensor | None,
) -> tuple[torch.Tensor | None, Weights, Weights | None, Weights | None, Weights]:
    """Tokens of one chunk that all take their gradient at `anchor` and update linearly.

    read0 is the read weights before the segment (None: the same as mem0). Returns (o [B, H, n, V] or None when
    q is None, memory after, momentum after, read weights after (None when read0 is None), anchor after).
    """
    coef = _Coefficients(eta, alpha, theta)
    gamma = coef.a if spec.gradient_at == "retained" else None
    inputs, deltas = _anchor_gradients(spec, anchor, k, v, delta, gamma)
    o = None
    if q is not None:
        o = _dual_read(spec, mem0 if read0 is None else read0, mom0, coef, inputs, deltas, q)
    a_end = coef.a[..., -1, None, None]  # [B, H, 1, 1]
    c_end = coef.c[..., -1, :].unsqueeze(-1)  # [B, H, n, 1]
    updates = [(d * c_end).transpose(-1, -2) @ x for d, x in zip(deltas, inputs)]  # sum_i C[n, i] g_i
    mem = [a_end * m - u for m, u in zip(mem0, updates)]
    mom = None
    if mom0 is not None:
        b_end = coef.b[..., -1, None, None]
        mem = [m + b_end * s for m, s in zip(mem, mom0)]
        s_end = coef.s_end[..., None, None]
        d_end = coef.d_end.unsqueeze(-1)
        mom = tuple(s_end * s - (d * d_end).transpose(-1, -2) @ x for s, d, x in zip(mom0, deltas, inputs))
    read = None
    if read0 is not None:  # the read weights follow the same increments from their own base
        read = tuple(m + a_end * (r - m0) for m, r, m0 in zip(mem, read0, mem0))
    anchor_end = tuple(a_end * w for w in anchor) if gamma is not None else anchor
    return o, tuple(mem), mom, read, anchor_end


def chunk_miras(
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
    """Chunk-parallel Miras memory op; the same function as `naive_recurrent_miras` (README section 1).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        eta: [B, T, H] inner learning rate (> 0); alpha: [B, T, H] retention in [0, 1] (None for retention="none");
        momentum: [B, T, H] θ in [0, 1] (algorithm="momentum"); delta: [B, T, H] Huber δ > 0 (bias="huber").
        chunk_size: tokens per chunk; every gradient in a chunk is taken at the chunk's anchor. Any T works.
        initial_state: None (zeros, linear memory only), the memory weights, or a MirasState.
    Returns:
        o [B, T, H, V] in q's dtype (computed in float32, or float64 for float64 input), and the final
        MirasState if output_final_state.
    """
    check_inputs(spec, q, k, v, eta, alpha, momentum, delta, chunk_size)
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    state = resolve_state(spec, initial_state, B, H, K, v.shape[-1], dt, q.device, chunk_size)

    def heads_first(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else x.to(dt).transpose(1, 2)  # [B, T, H, ...] -> [B, H, T, ...]

    qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)
    eta_h, alpha_h, theta_h, delta_h = (heads_first(g) for g in (eta, alpha, momentum, delta))

    def window(x: torch.Tensor | None, start: int, end: int) -> torch.Tensor | None:
        return None if x is None else x[:, :, start:end]

    def run(read0, mem0, mom0, anchor, start, end, with_q=True):
        return _segment(
            spec, anchor, read0, mem0, mom0, window(qh, start, end) if with_q else None, window(kh, start, end),
            window(vh, start, end), window(eta_h, start, end), window(alpha_h, start, end),
            window(theta_h, start, end), window(delta_h, start, end),
        )

    mem, mom, pos = state.memory, state.momentum, state.offset
    anchor, read = state.anchor, state.read
    outputs = []
    t = 0
    while t < T:
        if pos == 0:
            if spec.nonlinear_retention:  # the lag token takes the exact non-linear step (README section 4)
                _, mem, mom, _, _ = run(None, mem, mom, retention_map(spec, mem), t, t + 1, with_q=False)
                read = anchor = retention_map(spec, mem)
                outputs.append(memory_forward(spec, read, qh[:, :, t : t + 1]))
                t, pos = t + 1, (1 % chunk_size)
                continue
            anchor, read = mem, None
        n = min(chunk_size - pos, T - t)
        o, mem, mom, read, anchor = run(read, mem, mom, anchor, t, t + n)
        outputs.append(o)
        t, pos = t + n, (pos + n) % chunk_size
    o = torch.cat(outputs, dim=2).transpose(1, 2).to(q.dtype)  # [B, T, H, V]
    if not output_final_state:
        return o, None
    if pos == 0:
        return o, MirasState(mem, mom)
    return o, MirasState(mem, mom, pos, anchor, read)
