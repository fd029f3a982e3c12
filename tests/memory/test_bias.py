"""Each bias's upstream gradient u equals autograd of the inner loss it names (smoothing off)."""

from __future__ import annotations

import pytest
import torch

from miras.memory.bias import upstream
from miras.spec import MemorySpec


def _loss(spec: MemorySpec, pred, target, delta):
    e = pred - target
    if spec.bias == "dot":
        return -(pred * target).sum()
    if spec.bias == "l2":
        return 0.5 * (e * e).sum()
    if spec.bias == "lp":
        return (e.abs() ** spec.p).sum()
    if spec.bias == "huber":
        norm = e.norm(dim=-1)
        inside = norm <= delta
        return torch.where(inside, 0.5 * (e * e).sum(-1), delta * e.abs().sum(-1)).sum()
    return (0.5 * (e * e).sum(-1) + spec.robust_radius * e.norm(dim=-1)).sum()


@pytest.mark.parametrize("bias", ["dot", "l2", "lp", "huber", "robust"])
def test_upstream_is_the_loss_gradient(bias):
    # exact forms: no smoothing (robust needs some ε, and 1e-300 vanishes next to ‖e‖² ~ 1)
    spec = MemorySpec(bias=bias, p=3.0, abs_eps=1e-300 if bias == "robust" else 0.0, robust_radius=0.7)
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 6, 8, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.randn(5, 6, 8, generator=g, dtype=torch.float64)
    delta = torch.rand(5, 6, generator=g, dtype=torch.float64) * 4  # both Huber branches occur
    (expected,) = torch.autograd.grad(_loss(spec, pred, target, delta), pred)
    torch.testing.assert_close(upstream(spec, pred, target, delta), expected, rtol=1e-12, atol=1e-12)


def test_smoothing():
    spec = MemorySpec(bias="lp", p=3.0, sign_sharpness=5.0, abs_eps=1e-2)
    e = torch.tensor([-1.0, 0.0, 0.5], dtype=torch.float64)
    u = upstream(spec, e, torch.zeros_like(e))
    torch.testing.assert_close(u, 3.0 * torch.tanh(5.0 * e) * (e * e + 1e-2))
