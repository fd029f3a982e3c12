"""The retention maps: the lq map is the paper's Eq. 24 with our floor, and `retention_weights` (what the chunk op
uses) stands for the same weights as `retention_map`."""

from __future__ import annotations

import pytest
import torch

from miras import presets
from miras.memory.retention import retention_map, retention_weights


def _accum(scale: float, g: torch.Generator) -> tuple[torch.Tensor, ...]:
    accum = tuple((scale * torch.randn(2, 3, o, i, generator=g, dtype=torch.float64)) for o, i in ((8, 4), (4, 8)))
    accum[0][0, 0, 0, 0] = 0.0  # |A|^{q-2} at A = 0 stays finite for q < 2
    return tuple(a.requires_grad_() for a in accum)


@pytest.mark.parametrize("q", [4.0, 3.0, 1.5, 2.0])
@pytest.mark.parametrize("scale", [3.0, 0.05])  # above the floor (the norm depends on A) and below it (W = A)
def test_lq_map_is_eq24(q, scale):
    """W = A / n^{q-2}, n = max(‖A‖_q, lq_floor), against torch's vector norm; gradients finite at A = 0."""
    spec = presets.moneta(q=q)
    g = torch.Generator().manual_seed(1)
    accum = _accum(scale, g)
    upstream = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in accum]
    weights, scales = retention_weights(spec, accum)
    got = [w * s for w, s in zip(weights, scales)]
    norms = [torch.linalg.vector_norm(a, ord=q, dim=(-2, -1), keepdim=True).clamp_min(spec.lq_floor) for a in accum]
    want = [a / n ** (q - 2.0) for a, n in zip(accum, norms)]
    for x, y, z in zip(got, want, retention_map(spec, accum)):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=0)
        torch.testing.assert_close(z, y, rtol=1e-13, atol=0)
    grads_got = torch.autograd.grad(got, accum, upstream)
    grads_want = torch.autograd.grad(want, accum, upstream)
    for x, y in zip(grads_got, grads_want):
        assert torch.isfinite(x).all()
        finite = torch.isfinite(y)  # the vector norm's gradient is NaN at a zero entry for q < 2
        torch.testing.assert_close(x[finite], y[finite], rtol=1e-12, atol=1e-14)


def test_other_maps_are_written_out():
    for spec in (presets.memora(), presets.moneta(lq_map="mirror"), presets.yaad()):
        a = (torch.randn(2, 4, 3, dtype=torch.float64),)
        weights, scales = retention_weights(spec, a)
        assert scales is None and weights[0].equal(retention_map(spec, a)[0])
