"""Retention maps φ: accumulator A -> memory weights W, for the non-linear retentions.

With "none" and "decay" the state is the weights themselves (φ = identity). With "lq", "kl" and "elastic" the state
carried between chunks is an accumulator A that follows the same linear recurrence as decay (A ← α A - η g, or with
momentum), and the memory is W = φ(A):
  lq:      W = A / n^{q-2}                 n = max(‖A‖_q, lq_floor), ‖·‖_q entry-wise over each weight matrix
           W = Sign(A)|A|^{q-1} / n^{q-2}   (lq_map="mirror", the gradient of ½‖A‖_q², homogeneous of degree 1)
  kl:      W = c · softmax(A) over each row (a unit's inputs), c = kl_scale or sqrt(fan_in). A is a logit: the
           paper's α log W_{t-1} equals α A_{t-1} up to a per-row constant, which the softmax ignores, so Memora's
           update is exactly linear in A and W stays positive across chunks (the paper's open question).
  elastic: W = S_γ(A) = Sign(A) max(|A| - γ, 0)   (FTRL elastic net, Eq. 23)
Every map is applied per weight matrix, per batch element and head (tensors [B, H, out, in]).
"""

from __future__ import annotations

import math

import torch

from miras.memory.bias import smooth_abs_pow, smooth_sign
from miras.spec import MemorySpec


def lq_scale(spec: MemorySpec, a: torch.Tensor) -> torch.Tensor:
    """1 / n^{q-2} per weight matrix ([..., 1, 1]), n = max(‖A‖_q, lq_floor): the literal map is W = lq_scale · A.

    n^{q-2} comes from the clamped sum Σ|A|^q, never the root of 0 (its gradient is infinite), so A = 0 needs no ε.
    q = 4 (Moneta) without a pow; otherwise |a|^q, not (a²)^{q/2}, whose gradient is NaN at a = 0 for q < 2."""
    q = spec.q
    powered = (a * a) ** 2 if q == 4.0 else a.abs() ** q
    total = powered.sum(dim=(-2, -1), keepdim=True).clamp_min(spec.lq_floor**q)
    return total ** (-(q - 2.0) / q)


def _lq(spec: MemorySpec, a: torch.Tensor) -> torch.Tensor:
    if spec.lq_map == "mirror":
        return smooth_sign(spec, a) * smooth_abs_pow(spec, a, spec.q - 1.0) * lq_scale(spec, a)
    return a * lq_scale(spec, a)


def _kl(spec: MemorySpec, a: torch.Tensor) -> torch.Tensor:
    scale = spec.kl_scale if spec.kl_scale > 0 else math.sqrt(a.shape[-1])
    return scale * torch.softmax(a, dim=-1)


def _elastic(spec: MemorySpec, a: torch.Tensor) -> torch.Tensor:
    return torch.sign(a) * torch.relu(a.abs() - spec.elastic_threshold)


_MAPS = {"lq": _lq, "kl": _kl, "elastic": _elastic}


def retention_map(spec: MemorySpec, accum: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """W = φ(A) for every weight matrix; identity for linear retentions."""
    fn = _MAPS.get(spec.retention)
    if fn is None:
        return accum
    return tuple(fn(spec, a) for a in accum)


def retention_weights(
    spec: MemorySpec, accum: tuple[torch.Tensor, ...]
) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """φ(A) as (weights, scales) with W_l = scales[l] · weights[l] (scales None: W = weights). The lq literal map is
    a scalar per matrix, so it comes back as (A, lq_scale): a caller that only multiplies by W (the chunk op) puts the
    scalar on the smaller side of each matmul instead of writing W, and its backward has no pass over the weights
    for Σ G ⊙ A (miras/ops/README.md section 7). Every other map is materialized."""
    if spec.retention == "lq" and spec.lq_map == "literal":
        return accum, tuple(lq_scale(spec, a) for a in accum)
    return retention_map(spec, accum), None


def _kl_slope(spec: MemorySpec, weights: torch.Tensor) -> torch.Tensor:
    """Memora's slope from its weights W = c·p (p = softmax rows of n entries, `out` rows): the Jacobian's diagonal
    is c·p(1 - p), and the steps are centered per row (`slope_centers_rows`: a projection of trace n - 1 per row), so
    s = tr J / (out·(n-1)) = c/(n-1) - ‖W‖²_F / (c·out·(n-1)), since Σ p = out: one reduction over the weights, no
    second softmax (for n = 1, φ is constant and s = 0)."""
    out, n = weights.shape[-2:]
    if n == 1:
        return weights.new_zeros(*weights.shape[:-2], 1, 1)
    c = spec.kl_scale if spec.kl_scale > 0 else math.sqrt(n)
    return c / (n - 1) - weights.square().sum(dim=(-2, -1), keepdim=True) / (c * out * (n - 1))


def slope_centers_rows(spec: MemorySpec) -> bool:
    """Whether the scaled in-chunk steps also remove each row's mean: Memora's, since the softmax ignores a constant
    added to a row of A and its Jacobian at uniform rows is (c/n)(I - 11ᵀ/n)."""
    return spec.retention == "kl"


def retention_slope(
    spec: MemorySpec,
    accum: tuple[torch.Tensor, ...],
    mapped: tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None],
) -> tuple[torch.Tensor, ...]:
    """φ's mean slope at A per weight matrix ([..., 1, 1]): the mean of the diagonal of its Jacobian, tr J_φ(A) / N,
    i.e. the s for which s·I is the multiple of the identity closest to J_φ(A) (Frobenius). The in-chunk steps of
    `inchunk_steps="scaled"` are the accumulator's increments times s. mapped: φ(A) as `retention_weights(spec, A)`
    gives it, so that nothing it holds is computed again. For lq the normalizer n is held fixed (its own derivative
    adds a term of relative size (q-2)/N): the literal map's slope is then exactly its scale, `lq_scale`."""
    weights, scales = mapped
    if spec.retention == "lq":
        if spec.lq_map == "literal":
            return scales
        return tuple(
            (spec.q - 1.0) * smooth_abs_pow(spec, a, spec.q - 2.0).mean(dim=(-2, -1), keepdim=True) * lq_scale(spec, a)
            for a in accum
        )
    if spec.retention == "kl":
        return tuple(_kl_slope(spec, w) for w in weights)
    if spec.retention == "elastic":
        return tuple((a.abs() > spec.elastic_threshold).to(a.dtype).mean(dim=(-2, -1), keepdim=True) for a in accum)
    raise ValueError(f"retention={spec.retention!r} has no slope: its map is the identity")
