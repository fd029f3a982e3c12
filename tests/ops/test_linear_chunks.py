"""The all-chunks-at-once path of linear memories (miras/ops/linear_chunks.py): which specs take it, and the cases
the general equivalence tests (test_chunk.py) do not reach: many full chunks after a partial one, erasing gates."""

from __future__ import annotations

import pytest
import torch

import miras.ops.linear_chunks as linear_chunks_module
from miras import presets
from miras.ops import chunk_miras, naive_recurrent_miras
from miras.ops.linear_chunks import group_size, linear_chunks_apply
from miras.spec import MemorySpec
from tests.ops.inputs import make_inputs

LINEAR = sorted(name for name, preset in presets.PRESETS.items() if not preset().mlp)


def test_which_specs_take_the_path():
    assert all(linear_chunks_apply(presets.get(name)) for name in LINEAR)
    for spec in (
        presets.moneta(),  # MLP memory
        MemorySpec(memory="linear", bias="l2", retention="decay", algorithm="momentum"),  # a second state
        MemorySpec(memory="linear", bias="huber", retention="decay"),  # gradients not affine in the memory
        MemorySpec(memory="linear", bias="l2", retention="kl"),  # a lag token per chunk
    ):
        assert not linear_chunks_apply(spec)


@pytest.mark.parametrize("gradients", ["per_chunk", "per_token"])
@pytest.mark.parametrize("preset", LINEAR)
@pytest.mark.parametrize("erase", [False, True])
@pytest.mark.parametrize("grouped", [False, True])
def test_many_chunks_after_a_partial_one(preset, gradients, erase, grouped, monkeypatch):
    """Starts mid-chunk (a state with offset; per-token gradients carry no chunk, so there it is a call of 3 tokens),
    then 5 full chunks, then a tail; with erase, some α are exactly 0 (log space clamps them to 1e-30) and some
    exactly 1. grouped: the full chunks go 2 per call (2, 2, 1)."""
    spec, chunk_size, head = presets.get(preset, gradients=gradients), 8, 3
    if grouped:  # B·H·m·m elements per chunk at B = H = 2, m = 8
        monkeypatch.setattr(linear_chunks_module, "GROUP_ELEMENTS", 2 * 2 * 2 * chunk_size * chunk_size)
        assert group_size(2, 2, chunk_size, 4) == 2
    T = head + 5 * chunk_size + 4
    q, k, v, gates, state, leaves = make_inputs(spec, T=T, requires_grad=True)
    if erase and gates["alpha"] is not None:
        with torch.no_grad():
            gates["alpha"][:, 10] = 0.0
            gates["alpha"][:, 30:33] = 1.0

    def run(fn):
        _, mid = fn(
            q[:, :head].detach(),
            k[:, :head].detach(),
            v[:, :head].detach(),
            gates["eta"][:, :head].detach(),
            None if gates["alpha"] is None else gates["alpha"][:, :head].detach(),
            spec=spec,
            chunk_size=chunk_size,
            initial_state=state,
            output_final_state=True,
        )
        assert mid.offset == (0 if spec.per_token else head)
        return fn(
            q[:, head:],
            k[:, head:],
            v[:, head:],
            gates["eta"][:, head:],
            None if gates["alpha"] is None else gates["alpha"][:, head:],
            spec=spec,
            chunk_size=chunk_size,
            initial_state=mid,
            output_final_state=True,
        )

    (o, s), (o_ref, s_ref) = run(chunk_miras), run(naive_recurrent_miras)
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s.memory[0], s_ref.memory[0], rtol=1e-9, atol=1e-9)
    cotangent = torch.randn_like(o)
    # At an α of exactly 0 the fast path's gradient for that α is 0 (the clamp), the reference's is not: compare
    # every other gradient there, and require finite values everywhere.
    inputs = [q, k, v, gates["eta"], *([] if gates["alpha"] is None else [gates["alpha"]])]
    grads = torch.autograd.grad(o, inputs, cotangent)
    grads_ref = torch.autograd.grad(o_ref, inputs, cotangent)
    for i, (a, b) in enumerate(zip(grads, grads_ref, strict=True)):
        assert torch.isfinite(a).all()
        if i == 4 and erase:
            a, b = a[:, 11:], b[:, 11:]  # after the erased token (index 10 of the leaves)
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8, msg=lambda m: f"gradient of input {i}: {m}")


def test_decayed_scores_backward_is_autograd_of_the_formula():
    """_DecayedScores' hand-written backward (first and second order) against torch.autograd.gradcheck, with a
    strongly decaying row so that the masked exponent spans a wide range."""
    g = torch.Generator().manual_seed(0)
    R, m = 3, 5
    qk = torch.randn(R, m, m, generator=g, dtype=torch.float64, requires_grad=True)
    logs = torch.log(torch.rand(R, m, generator=g, dtype=torch.float64) * 0.9 + 0.05).cumsum(-1)
    base = (logs - torch.log(torch.rand(R, m, generator=g, dtype=torch.float64) + 0.1)).requires_grad_()
    logs.requires_grad_()
    fn = linear_chunks_module._DecayedScores.apply
    assert torch.autograd.gradcheck(fn, (qk, logs, base))
    assert torch.autograd.gradgradcheck(fn, (qk, logs, base))
    causal = torch.ones(m, m, dtype=torch.bool).tril()
    want = qk * torch.exp(logs.unsqueeze(-1) - base.unsqueeze(-2)) * causal
    torch.testing.assert_close(fn(qk, logs, base), want, rtol=1e-12, atol=0)
