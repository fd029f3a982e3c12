"""Many full chunks of a linear memory at once: a chunk-to-chunk affine scan plus batched in-chunk reads.

For a linear memory with an update linear in the state (bias dot or l2, retention none or decay, plain gd) every
chunk is an affine map of its base weights: W_end = W_0 A + B_mem and O = Q̃ W_0ᵀ + S V, where A, B_mem, Q̃ and S
depend only on the chunk's tokens and gates (derivation: miras/ops/README.md section 6). So the only sequential work
is the scan W_{j+1} = W_j A_j + B_j, one small matmul per chunk; everything else is one batched matmul over all
chunks. The general per-chunk path (`chunk._segment`) computes the same function and still serves partial chunks and
every other memory.

Axis legend: B batch, H heads, N chunks, m tokens per chunk, K key dim, V value dim.
"""

from __future__ import annotations

import torch

from miras.ops.state import TINY_GATE
from miras.spec import MemorySpec

# The chunks run in groups (group_size; chunk_miras makes each group one call) whose chunk-sized tensors
# ([group·B·H, 64, 64]) hold about this many elements (2 MB in float32), so that they stay in cache between the
# passes over them (~30 for l2, ~10 for dot; all-chunk tensors at T = 8192 are 16 MB, and each elementwise pass over
# them runs at DRAM speed). Measured side by side at B=2, H=4, 2 threads: gated_deltanet 1.2x the per-chunk path in
# groups of 16 chunks, 1.0x in one group; groups of 16 against one group for the dot path, median of 15 runs at
# T = 8192: retnet 1.13-1.23x, mamba2 1.07-1.12x, linear_attention 1.14-1.22x (1.19x for retnet at T = 2048).
GROUP_ELEMENTS = 2**19


def linear_chunks_apply(spec: MemorySpec) -> bool:
    """Whether `linear_chunks` computes this spec: a linear memory whose per-chunk update is affine in its base
    (per-chunk gradients, or per-token ones through the delta rule's triangular solve)."""
    return not spec.mlp and spec.algorithm == "gd" and spec.bias in ("dot", "l2") and not spec.nonlinear_retention


def group_size(B: int, H: int, m: int, K: int) -> int:
    """How many full chunks one `linear_chunks` call should take."""
    return max(1, GROUP_ELEMENTS // (B * H * m * max(m, K)))


def linear_chunks(
    spec: MemorySpec,
    w0: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """N consecutive full chunks from the weights w0 [B, H, V, K] at the first chunk's start, in batched matmuls.

    q, k [B, H, N, m, K], v [B, H, N, m, V]; eta, alpha [B, H, N, m] (alpha None: retention "none").
    Returns (o [B, H, N, m, V], the weights after the last chunk [B, H, V, K]).
    """
    B, H, N, m, K = q.shape
    q, k, v = (x.contiguous().flatten(0, 2) for x in (q, k, v))  # [B·H·N, m, D]: every matmul is one bmm
    eta = eta.flatten(0, 2)
    logs = base = None  # the chunks' cumulative log gates L_t, and L_i - log η_i (retention "decay" only)
    if alpha is not None:
        logs = torch.log(alpha.flatten(0, 2).clamp_min(TINY_GATE)).cumsum(-1)
        base = logs - torch.log(eta)
    a, scores, c_end = _scores(torch.bmm(q, k.mT), eta, logs, base)
    c_end = c_end.unsqueeze(-1)  # [B·H·N, m, 1]
    q_tilde = q if a is None else a.unsqueeze(-1) * q  # the base's part of each read, a_t q_t
    if spec.bias == "l2":  # u_i = γ_i W_0 k_i - v_i: the gradients feed back through the base
        if spec.per_token:  # the exact delta rule: the keys and values through the chunk's (I + A)⁻¹
            k_anchor, v = _delta_rule_factors(spec, k, v, eta, logs, base)
        else:
            # -γ_i k_i, γ_i = a_i for gradient_at="retained" (the anchor is the retained base). The sign rides on
            # the small gate vector: a baddbmm with alpha=-1 would cost two weight-sized passes in its backward.
            k_anchor = -k if spec.gradient_at == "anchor" or a is None else k * (-a).unsqueeze(-1)
        q_tilde = torch.baddbmm(q_tilde, scores, k_anchor)  # a_t q_t - Σ_i S[t, i] γ_i k_i
        eye = torch.eye(K, dtype=k.dtype, device=k.device)
        start = eye if a is None else a[:, -1, None, None] * eye
        transition = torch.baddbmm(start, (k_anchor * c_end).mT, k)  # A_j = a_m I - Σ_i c[m, i] γ_i k_i k_iᵀ
    else:  # dot: u_i = -v_i, so the base only decays: A_j = a_m I, kept as a scalar (None: retention "none")
        transition = None if a is None else a[:, -1, None, None]
    carry = torch.bmm((v * c_end).mT, k)  # B_j = Σ_i c[m, i] v_i k_iᵀ  [B·H·N, V, K]
    bases, w_end = _scan(w0, transition, carry.unflatten(0, (B, H, N)))  # bases [B·H·N, V, K]: each chunk's W_0
    o = torch.baddbmm(torch.bmm(scores, v), q_tilde, bases.mT)
    return o.unflatten(0, (B, H, N)), w_end


def _delta_rule_factors(
    spec: MemorySpec,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    logs: torch.Tensor | None,
    base: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact per-token delta rule of a chunk as the mini-batch form with other keys and values (README
    section 6): (-K̃, Ṽ) with K̃ = T (e^{Γ'} ⊙ K), Ṽ = T V and T = (I + A)⁻¹, a unit-lower-triangular inverse.

    k [R, m, K], v [R, m, V], eta [R, m]; logs and base [R, m] as `linear_chunks` computes them (None: retention
    "none"). Token t's gradient is taken at
    ρ_t W_{t-1} (ρ = α_t for gradient_at="retained", 1 for "anchor"), whose base part is e^{Γ'_t} W_0 with
    Γ'_t = L_t ("retained") or L_{t-1} ("anchor"), L the cumulative log α. A[t, i] = η_i e^{Γ'_t - L_i} k_t·k_i for
    i < t: how much token i's write changes token t's residual. The residuals ν = Ṽ - K̃ W_0ᵀ then play the part of
    -u in the mini-batch algebra, so the chunk's reads, carry and transition keep their form.
    """
    m = k.shape[-2]
    kk = torch.bmm(k, k.mT)
    if logs is None:
        upper = torch.ones(m, m, dtype=torch.bool, device=k.device).triu()
        lower = (kk * eta.unsqueeze(-2)).masked_fill_(upper, 0.0)
        minus_k = -k
    else:
        # Γ'_t: L_t for "retained", L_{t-1} for "anchor"
        reads = logs if spec.gradient_at == "retained" else torch.nn.functional.pad(logs[:, :-1], (1, 0))
        lower = _DecayedScores.apply(kk, reads, base, True)  # kk ⊙ e^{Γ'_t - L_i + log η_i}, i < t
        minus_k = torch.exp(reads).neg().unsqueeze(-1) * k  # the sign on the [R, m] vector, not on k's size
    inverse = _UnitLowerInverse.apply(lower)  # T = (I + A)⁻¹
    return torch.bmm(inverse, minus_k), torch.bmm(inverse, v)  # two bmms: no concatenation of k and v to split


def _scores(
    qk: torch.Tensor, eta: torch.Tensor, logs: torch.Tensor | None, base: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """qk [R, m, m] (q_t·k_i), eta [R, m], the cumulative log gates L = logs and base = L - log η [R, m] (None:
    no retention) -> (a [R, m], a_t = ∏_{l≤t} α_l; the scores
    S [R, m, m], S[t, i] = c[t, i] q_t·k_i with c[t, i] = ∏_{i<l≤t} α_l · η_i, zero for i > t; c_end [R, m], the last
    row of c, from the gate vectors: a slice of S-sized c would cost a zero-filled c-sized gradient in the backward).
    No retention: a is None (all ones) and c the lower triangle of η.

    c = exp(L_t - L_i + log η_i) from the chunk's cumulative log gates L (the fla chunk kernels' form, with η in the
    exponent: no c-sized product with η, forward or backward; η > 0 is the op's contract, checked under
    `miras.ops.debug_checks()`). Within a chunk of
    64 tokens the cancellation error stays below 1e-7 of the exponent's magnitude (float32), where the exponent is
    at most 64·69 (a gate of 0 becomes 1e-30).
    """
    m = qk.shape[-1]
    if logs is None:
        causal = torch.ones(m, m, dtype=torch.bool, device=qk.device).tril()
        return None, qk * (eta.unsqueeze(-2) * causal), eta
    return torch.exp(logs), _DecayedScores.apply(qk, logs, base), torch.exp(logs[:, -1:] - base)


class _DecayedScores(torch.autograd.Function):
    """S = qk ⊙ exp(L_t - base_i) on and below the diagonal, 0 above (qk [R, m, m], L and base [R, m]).

    By hand because it is the dot path's largest non-matmul cost: the exponent is built, masked and exponentiated
    in one buffer, and since ∂S/∂(L_t - base_i) = S the backward is dS ⊙ c, dS ⊙ S and two row/column sums:
    4 S-sized passes forward and 4 backward, where autograd through the same formulas takes 4 and 6. The backward
    is written in differentiable ops (double backward works)."""

    @staticmethod
    def forward(ctx, qk: torch.Tensor, logs: torch.Tensor, base: torch.Tensor, strict: bool = False) -> torch.Tensor:
        c = masked_decay(logs, base, strict)
        scores = qk * c
        ctx.save_for_backward(qk, logs, base, c, scores)
        ctx.strict = strict
        return scores

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qk, logs, base, c, scores = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: the saved c and S have no graph to the inputs
            c = masked_decay(logs, base, ctx.strict)
            scores = qk * c
        grad_exponent = grad * scores
        return grad * c, grad_exponent.sum(-1), -grad_exponent.sum(-2), None


def masked_decay(logs: torch.Tensor, base: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """exp(L_t - base_i) for i <= t (i < t when strict), 0 above; one buffer, built in place."""
    m = logs.shape[-1]
    above = torch.ones(m, m, dtype=torch.bool, device=logs.device).triu(0 if strict else 1)
    return (logs.unsqueeze(-1) - base.unsqueeze(-2)).masked_fill_(above, float("-inf")).exp_()


# Block size of `_UnitLowerInverse`'s forward substitution (measured on [1024, 64, 64] float32 inverses, 2 threads:
# 16 took 17 ms, 8 20 ms, 32 45 ms, torch.linalg.solve_triangular against the identity 53 ms).
INVERSE_BLOCK = 16


class _UnitLowerInverse(torch.autograd.Function):
    """T = (I + A)⁻¹ for strictly lower-triangular A [R, m, m].

    By hand because torch's batched triangular solve is slow on a CPU for many small matrices (53 ms for 1024
    inverses of 64×64 where a bmm of the same shape takes 7 ms): blocks of INVERSE_BLOCK rows, each diagonal block
    inverted by doubling ((I + N)(I + N²)(I + N⁴)(I + N⁸) = (I - N)⁻¹ for N nilpotent), the rest by block forward
    substitution, all bmms. float32 error against float64 is that of the solve (4e-8 against 3e-8, relative, for
    unit keys and β up to 1). The backward of an inverse is dA = -Tᵀ dT Tᵀ, restricted to the strictly lower
    triangle: two bmms, in differentiable ops (double backward recomputes T with a graph)."""

    @staticmethod
    def forward(ctx, lower: torch.Tensor) -> torch.Tensor:
        inverse = _blocked_unit_lower_inverse(lower)
        ctx.save_for_backward(lower, inverse)
        return inverse

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        lower, inverse = ctx.saved_tensors
        if torch.is_grad_enabled():
            eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
            inverse = torch.linalg.solve_triangular(lower + eye, eye.expand_as(lower), upper=False, unitriangular=True)
        return -(inverse.mT @ grad @ inverse.mT).tril(-1)


def _blocked_unit_lower_inverse(lower: torch.Tensor) -> torch.Tensor:
    m = lower.shape[-1]
    eye = torch.eye(m, dtype=lower.dtype, device=lower.device)
    inverse = torch.zeros_like(lower)
    starts = list(range(0, m, INVERSE_BLOCK))
    for s in starts:  # diagonal blocks: (I + A)⁻¹ = Π_j (I + N^(2^j)) with N = -A nilpotent
        e = min(s + INVERSE_BLOCK, m)
        power = -lower[:, s:e, s:e]
        block = eye[: e - s, : e - s] + power
        for _ in range(max(e - s - 1, 1).bit_length() - 1):
            power = power @ power
            block = block + block @ power
        inverse[:, s:e, s:e] = block
    for s in starts[1:]:  # block rows: T_{r, <r} = -T_rr A_{r, <r} T_{<r, <r}
        e = min(s + INVERSE_BLOCK, m)
        inverse[:, s:e, :s] = -inverse[:, s:e, s:e] @ (lower[:, s:e, :s] @ inverse[:, :s, :s])
    return inverse


def _scan(w0: torch.Tensor, transition: torch.Tensor | None, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W_{j+1} = W_j A_j + B_j from W_0 = w0 [B, H, V, K]; carry [B, H, N, V, K]; transition [B·H·N, K, K], or
    [B·H·N, 1, 1] (a scalar), or None (the identity). Returns (W_0..W_{N-1} as [B·H·N, V, K], W_N [B, H, V, K]).
    One fused op per chunk on [B·H, V, K]; unbind and stack cost one backward op each."""
    B, H, N = carry.shape[:3]
    steps = [None] * N if transition is None else transition.unflatten(0, (B * H, N)).unbind(1)
    bases, w = [], w0.flatten(0, 1)
    for a_j, b_j in zip(steps, carry.flatten(0, 1).unbind(1)):
        bases.append(w)
        if a_j is None:
            w = w + b_j
        elif a_j.shape[-1] == 1:
            w = torch.addcmul(b_j, w, a_j)
        else:
            w = torch.baddbmm(b_j, w, a_j)
    return torch.stack(bases, dim=1).flatten(0, 1), w.unflatten(0, (B, H))
