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
    if spec.bias == "huber" and spec.huber_form == "coordinate":  # Σ_j H(e_j), Eq. 13 per coordinate
        d = delta.unsqueeze(-1)
        return torch.where(e.abs() <= d, 0.5 * e * e, d * (e.abs() - 0.5 * d)).sum()
    if spec.bias == "huber" and spec.huber_form == "norm":  # H(‖e‖)
        norm = e.norm(dim=-1)
        return torch.where(norm <= delta, 0.5 * norm**2, delta * (norm - 0.5 * delta)).sum()
    if spec.bias == "huber":  # the mixture: ½‖e‖² inside the δ-ball, δ‖e‖₁ outside
        norm = e.norm(dim=-1)
        inside = norm <= delta
        return torch.where(inside, 0.5 * (e * e).sum(-1), delta * e.abs().sum(-1)).sum()
    return (0.5 * (e * e).sum(-1) + spec.robust_radius * e.norm(dim=-1)).sum()


@pytest.mark.parametrize(
    ("bias", "huber_form"),
    [("dot", "mixture"), ("l2", "mixture"), ("lp", "mixture"), ("robust", "mixture")]
    + [("huber", form) for form in ("mixture", "norm", "coordinate")],
)
def test_upstream_is_the_loss_gradient(bias, huber_form):
    # exact forms: no smoothing (robust needs some ε, and 1e-300 vanishes next to ‖e‖² ~ 1)
    spec = MemorySpec(
        bias=bias, p=3.0, abs_eps=1e-300 if bias == "robust" else 0.0, robust_radius=0.7, huber_form=huber_form
    )
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


def test_huber_forms_are_continuous_except_the_mixture():
    """At the threshold ‖e‖ = δ the norm and coordinate forms meet their l2 side; the paper's mixture (Yaad) jumps
    from ‖u‖ = δ to δ√V (exact sign)."""
    V, delta = 16, torch.tensor(1.0, dtype=torch.float64)
    direction = torch.ones(V, dtype=torch.float64) / V**0.5
    for form, jump in (("norm", 1.0), ("mixture", V**0.5)):
        spec = MemorySpec(bias="huber", huber_form=form)
        below, above = (
            upstream(spec, r * direction, torch.zeros(V, dtype=torch.float64), delta) for r in (1.0, 1.0 + 1e-9)
        )
        assert below.norm().item() == pytest.approx(1.0) and above.norm().item() == pytest.approx(jump)
    spec = MemorySpec(bias="huber", huber_form="coordinate")
    e = torch.tensor([0.5, 1.0, 1.0 + 1e-9, 3.0], dtype=torch.float64)
    torch.testing.assert_close(
        upstream(spec, e, torch.zeros(4, dtype=torch.float64), delta),
        torch.tensor([0.5, 1.0, 1.0, 1.0], dtype=torch.float64),
    )
