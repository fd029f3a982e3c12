"""The retention maps: the chunk op's fused lq map equals the reference formulas, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from miras import presets
from miras.memory.retention import fused_retention_map, retention_map


@pytest.mark.parametrize("q", [4.0, 3.0, 1.5, 2.0])
@pytest.mark.parametrize("scale", [3.0, 0.05])  # above the floor (the norm depends on A) and below it (W = A)
def test_fused_lq_map_is_the_reference(q, scale):
    spec = presets.moneta(q=q)
    g = torch.Generator().manual_seed(1)
    accum = tuple((scale * torch.randn(2, 3, o, i, generator=g, dtype=torch.float64)).requires_grad_() for o, i in ((8, 4), (4, 8)))
    accum[0].data[0, 0, 0, 0] = 0.0  # |A|^{q-2} at A = 0 stays finite for q < 2
    upstream = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in accum]
    got, want = fused_retention_map(spec, accum), retention_map(spec, accum)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-13, atol=0)
    grads_got = torch.autograd.grad(got, accum, upstream)
    grads_want = torch.autograd.grad(want, accum, upstream)
    for x, y in zip(grads_got, grads_want):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_fused_lq_map_second_order():
    spec = presets.moneta()
    a = (3.0 * torch.randn(2, 4, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: fused_retention_map(spec, (x,))[0], (a,))


def test_other_maps_are_the_reference():
    for spec in (presets.memora(), presets.moneta(lq_map="mirror"), presets.yaad()):
        a = (torch.randn(2, 4, 3, dtype=torch.float64),)
        assert fused_retention_map(spec, a)[0].equal(retention_map(spec, a)[0])
