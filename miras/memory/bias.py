"""Attentional biases: the upstream gradient u = ∂ℓ/∂M(k) of the inner loss, per token.

e = M(k) - v is the residual, shapes [..., V]; delta (Huber's δ_t) broadcasts as [..., 1].
The memory's weight gradient is u backpropagated through the memory (closed form in the fast path, autograd in the
reference), so a bias is fully described by u. Smoothing (paper Sec. 7): Sign(x) ≈ tanh(s·x) when
sign_sharpness s > 0, and |x|^r ≈ (x² + ε)^{r/2} with ε = abs_eps (lp with the exact sign uses
Sign(x)|x|^{p-1} = x |x|^{p-2} ≈ x (x² + ε)^{(p-2)/2}, which stays continuous at 0).
"""

from __future__ import annotations

import torch

from miras.spec import MemorySpec


def smooth_sign(spec: MemorySpec, x: torch.Tensor) -> torch.Tensor:
    if spec.sign_sharpness > 0:
        return torch.tanh(spec.sign_sharpness * x)
    return torch.sign(x)


def smooth_abs_pow(spec: MemorySpec, x: torch.Tensor, power: float) -> torch.Tensor:
    if spec.abs_eps == 0:
        return x.abs() ** power
    sq = x * x + spec.abs_eps
    if power == 2.0:  # the common cases without a general pow (the hot path of Moneta: p = 3, q = 4)
        return sq
    if power == 1.0:
        return torch.sqrt(sq)
    return sq ** (0.5 * power)


def upstream(
    spec: MemorySpec, pred: torch.Tensor, target: torch.Tensor, delta: torch.Tensor | None = None
) -> torch.Tensor:
    """u = ∂ℓ(pred; target)/∂pred for the spec's bias. pred, target [..., V]; delta [...] (Huber only)."""
    if spec.bias == "dot":  # ℓ = -<M(k), v>
        return -target.expand_as(pred)
    e = pred - target
    if spec.bias == "l2":  # ℓ = ½‖e‖²
        return e
    if spec.bias == "lp":  # ℓ = ‖e‖_p^p
        if spec.sign_sharpness > 0:  # the paper's smoothing: p tanh(s e) (e² + ε)^{(p-1)/2}
            return spec.p * smooth_sign(spec, e) * smooth_abs_pow(spec, e, spec.p - 1.0)
        # exact sign: p e (e² + ε)^{(p-2)/2}, the gradient of Σ(e² + ε)^{p/2}; unlike sign(e)(e² + ε)^{(p-1)/2}
        # it is continuous at e = 0, so a rounding-level change of e cannot flip u by 2pε^{(p-1)/2}
        return spec.p * e * smooth_abs_pow(spec, e, spec.p - 2.0)
    if spec.bias == "huber":
        if delta is None:
            raise ValueError("bias='huber' needs the delta gate (Huber threshold δ_t)")
        d = delta.unsqueeze(-1)
        if spec.huber_form == "coordinate":  # ∇ Σ_j H(e_j) (Eq. 14)
            return torch.where(e.abs() <= d, e, d * smooth_sign(spec, e))
        sq = (e * e).sum(-1, keepdim=True)
        if spec.huber_form == "norm":  # ∇ H(‖e‖) (Eq. 15): e · δ / max(‖e‖, δ), no branch (δ > 0)
            return e * (d * torch.rsqrt(torch.maximum(sq, d * d)))
        # mixture (Yaad, Eqs. 16 and 26): l2 gradient inside the δ-ball, δ·∇‖e‖₁ outside
        return torch.where(sq <= d * d, e, d * smooth_sign(spec, e))
    # robust: ℓ = ½‖e‖² + Δ‖e‖ (the worst case over value shifts of norm ≤ Δ); ‖e‖ smoothed so u is finite at e = 0
    norm = torch.sqrt((e * e).sum(-1, keepdim=True) + spec.abs_eps)
    return e + spec.robust_radius * e / norm
