"""gradients="per_token" on the delta-rule family: the exact per-token recurrence at every chunk size.

The equivalence with the token loop (outputs, final state, every gradient) runs for every preset in test_chunk.py;
here the rule is checked against references written from the papers' equations with no library code, and across
calls (chaining, decode after a chunked prefix)."""

from __future__ import annotations

import pytest
import torch

from miras import presets
from miras.ops import chunk_miras, naive_recurrent_miras, recurrent_step
from tests.ops.inputs import make_inputs, run_op
from tests.ops.test_chunk import assert_equivalent


def _hand_written_delta_rule(q, k, v, beta, alpha, W0, retained: bool):
    """W_t = α_t W_{t-1} - β_t (ρ_t W_{t-1} k_t - v_t) k_tᵀ with ρ_t = α_t (retained, Gated DeltaNet:
    α_t W_{t-1} (I - β_t k_t k_tᵀ) + β_t v_t k_tᵀ) or 1; o_t = W_t q_t. W is [V, K]; alpha None is α ≡ 1."""
    W = W0.clone()
    outs = []
    for t in range(q.shape[1]):
        kt, vt, qt = k[:, t], v[:, t], q[:, t]  # [B, H, K], [B, H, V]
        a = 1.0 if alpha is None else alpha[:, t, :, None, None]
        b = beta[:, t, :, None, None]
        rho = a[..., 0] if retained and alpha is not None else 1.0  # [B, H, 1] against [B, H, V]
        error = rho * torch.einsum("bhvk,bhk->bhv", W, kt) - vt
        W = a * W - b * torch.einsum("bhv,bhk->bhvk", error, kt)
        outs.append(torch.einsum("bhvk,bhk->bhv", W, qt))
    return torch.stack(outs, dim=1), W


CASES = [  # (preset, overrides): both gradient_at values, with and without decay
    ("gated_deltanet", {}),
    ("gated_deltanet", {"gradient_at": "anchor"}),
    ("deltanet", {}),
    ("deltanet", {"retention": "decay"}),
]


@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("T", [1, 37, 130])
@pytest.mark.parametrize("preset, overrides", CASES)
def test_equals_the_hand_written_rule(preset, overrides, T, chunk_size):
    spec = presets.get(preset, **overrides)
    assert spec.per_token
    q, k, v, gates, state, _ = make_inputs(spec, T=T, V=5, K=6, seed=T)
    gates["eta"] = gates["eta"] * 20  # β up to 1: writes that interact strongly inside a chunk
    o, s = run_op(chunk_miras, spec, q, k, v, gates, state, chunk_size)
    o_ref, w_ref = _hand_written_delta_rule(
        q, k, v, gates["eta"], gates["alpha"], state.memory[0], spec.gradient_at == "retained"
    )
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.memory[0], w_ref, rtol=1e-12, atol=1e-12)
    assert s.offset == 0


@pytest.mark.parametrize("chunk_size", [1, 16, 64])
@pytest.mark.parametrize("preset, overrides", CASES)
def test_gradients_equal_the_token_loop(preset, overrides, chunk_size):
    assert_equivalent(presets.get(preset, **overrides), 101, chunk_size, seed=chunk_size)


def test_chunk_size_does_not_change_the_function():
    spec = presets.gated_deltanet()
    q, k, v, gates, state, _ = make_inputs(spec, T=150, seed=3)
    outs = [run_op(chunk_miras, spec, q, k, v, gates, state, c) for c in (1, 7, 16, 64, 256)]
    for o, s in outs[1:]:
        torch.testing.assert_close(o, outs[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s.memory[0], outs[0][1].memory[0], rtol=1e-12, atol=1e-12)


def test_per_chunk_is_a_different_function():
    """The mini-batch variant stays available under its own name, and is not the delta rule at chunk size > 1."""
    exact, minibatch = presets.gated_deltanet(), presets.gated_deltanet(gradients="per_chunk")
    q, k, v, gates, state, _ = make_inputs(exact, T=64, seed=1)
    gates["eta"] = gates["eta"] * 20
    o_exact, _ = run_op(chunk_miras, exact, q, k, v, gates, state, 16)
    o_mini, _ = run_op(chunk_miras, minibatch, q, k, v, gates, state, 16)
    o_mini_1, _ = run_op(chunk_miras, minibatch, q, k, v, gates, state, 1)
    torch.testing.assert_close(o_mini_1, o_exact, rtol=1e-12, atol=1e-12)
    assert (o_mini - o_exact).norm() / o_exact.norm() > 1e-3


@pytest.mark.parametrize("split", [1, 16, 17, 45])
def test_chaining(split):
    spec = presets.gated_deltanet()
    T, chunk_size = 64, 16
    q, k, v, gates, state, _ = make_inputs(spec, T=T, seed=split)
    o_full, s_full = run_op(chunk_miras, spec, q, k, v, gates, state, chunk_size)
    first = {n: None if g is None else g[:, :split] for n, g in gates.items()}
    second = {n: None if g is None else g[:, split:] for n, g in gates.items()}
    o1, s1 = run_op(chunk_miras, spec, q[:, :split], k[:, :split], v[:, :split], first, state, chunk_size)
    o2, s2 = run_op(chunk_miras, spec, q[:, split:], k[:, split:], v[:, split:], second, s1, chunk_size)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2.memory[0], s_full.memory[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prefix", [16, 21])
def test_decode_continues_a_chunked_prefix(prefix):
    """recurrent_step after chunk_miras over a prefix gives what one chunked call over the whole sequence gives."""
    spec = presets.gated_deltanet()
    T, chunk_size = 30, 16
    q, k, v, gates, state, _ = make_inputs(spec, T=T, seed=prefix)
    o_full, s_full = run_op(chunk_miras, spec, q, k, v, gates, state, chunk_size)
    head = {n: None if g is None else g[:, :prefix] for n, g in gates.items()}
    o_prefix, s = run_op(chunk_miras, spec, q[:, :prefix], k[:, :prefix], v[:, :prefix], head, state, chunk_size)
    outs = [o_prefix]
    for t in range(prefix, T):
        o_t, s = recurrent_step(
            spec,
            s,
            q[:, t],
            k[:, t],
            v[:, t],
            gates["eta"][:, t],
            gates["alpha"][:, t],
            None,
            None,
            chunk_size,
        )
        outs.append(o_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, dim=1), o_full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.memory[0], s_full.memory[0], rtol=1e-12, atol=1e-12)


def test_naive_reference_ignores_chunk_size():
    spec = presets.deltanet()
    q, k, v, gates, state, _ = make_inputs(spec, T=20, seed=5)
    o1, _ = run_op(naive_recurrent_miras, spec, q, k, v, gates, state, 1)
    o8, _ = run_op(naive_recurrent_miras, spec, q, k, v, gates, state, 8)
    torch.testing.assert_close(o8, o1, rtol=0, atol=0)


def test_equals_fla_chunked_reference():
    """fla-core's own chunk-parallel gated delta rule (pure PyTorch, computing in float32), when fla is installed."""
    from miras.bench.baselines import fla_chunk_gated_delta_rule

    fla_run, why = fla_chunk_gated_delta_rule()
    if fla_run is None:
        pytest.skip(why)
    spec = presets.gated_deltanet()
    q, k, v, gates, _, _ = make_inputs(spec, B=2, T=100, H=2, K=16, V=16, seed=11)
    gates["eta"] = gates["eta"] * 20
    o, _ = chunk_miras(q, k, v, gates["eta"], gates["alpha"], spec=spec, chunk_size=16)
    o_fla = fla_run(q, k, v, gates["eta"], torch.log(gates["alpha"]), chunk_size=64)
    torch.testing.assert_close(o_fla.to(o.dtype), o, rtol=1e-4, atol=1e-5)
