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


def _lq(spec: MemorySpec, a: torch.Tensor) -> torch.Tensor:
    # ‖A‖_q = m ‖A / m‖_q with m = max|A|, so that |A|^q cannot overflow (q = 4 overflows float32 at |A| ~ 1e10)
    m = a.detach().abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    norm = m * smooth_abs_pow(spec, a / m, spec.q).sum(dim=(-2, -1), keepdim=True) ** (1.0 / spec.q)
    scale = torch.clamp(norm, min=spec.lq_floor) ** (spec.q - 2.0)
    if spec.lq_map == "mirror":
        return smooth_sign(spec, a) * smooth_abs_pow(spec, a, spec.q - 1.0) / scale
    return a / scale


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
