"""chunk_miras ≡ naive_recurrent_miras: outputs, final state and every gradient, in float64 (the specification)."""

from __future__ import annotations

import random

import pytest
import torch

from miras import presets
from miras.ops import chunk_miras, naive_recurrent_miras
from miras.spec import ALGORITHMS, BIASES, HUBER_FORMS, MEMORIES, RETENTIONS, MemorySpec
from tests.ops.inputs import make_inputs, run_op


def _random_specs(count: int, seed: int = 42) -> list[MemorySpec]:
    rng = random.Random(seed)
    rng_gradients = random.Random(seed + 1)  # its own stream, so that the other fields' sample stays as it was
    rng_huber = random.Random(seed + 2)  # likewise
    specs = []
    while len(specs) < count:
        fields = dict(
            memory=rng.choice(MEMORIES),
            bias=rng.choice(BIASES),
            retention=rng.choice(RETENTIONS),
            algorithm=rng.choice(ALGORITHMS),
            mlp_depth=rng.choice([1, 2, 3]),
            mlp_activation=rng.choice(["gelu", "silu", "tanh"]),
            mlp_norm=rng.choice(["layernorm", "none"]),
            p=rng.choice([1.5, 2.0, 3.0, 4.0]),
            q=rng.choice([2.0, 3.0, 4.0]),
            lq_map=rng.choice(["literal", "mirror"]),
            sign_sharpness=rng.choice([0.0, 10.0]),
        )
        if fields["retention"] in ("none", "decay"):
            fields["gradient_at"] = rng.choice(["anchor", "retained"])
        if MemorySpec(**fields)._no_exact_parallel_form() is None:
            fields["gradients"] = rng_gradients.choice(["per_chunk", "per_token"])
        if fields["bias"] == "huber":
            fields["huber_form"] = rng_huber.choice(HUBER_FORMS)
        specs.append(MemorySpec(**fields))
    return specs


def _state_tensors(state):
    return [*state.memory, *(state.momentum or ()), *(state.anchor or ()), *(state.read or ()), *(state.slope or ())]


def assert_equivalent(spec: MemorySpec, T: int, chunk_size: int, seed: int = 0, grads: bool = True) -> None:
    q, k, v, gates, state, leaves = make_inputs(spec, T=T, seed=seed, requires_grad=grads)
    o_ref, s_ref = run_op(naive_recurrent_miras, spec, q, k, v, gates, state, chunk_size)
    o, s = run_op(chunk_miras, spec, q, k, v, gates, state, chunk_size)
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9, msg=lambda m: f"output: {m}")
    assert s.offset == s_ref.offset == (0 if spec.per_token else T % chunk_size)
    for a, b in zip(_state_tensors(s), _state_tensors(s_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=lambda m: f"final state: {m}")
    if not grads:
        return
    g = torch.Generator().manual_seed(seed + 1)
    # (elastic's slope, a fraction of active entries, is piecewise constant: it has no gradient to compare)
    pairs = [(a, b) for a, b in zip([o_ref, *_state_tensors(s_ref)], [o, *_state_tensors(s)]) if a.requires_grad]
    outs_ref, outs = [a for a, _ in pairs], [b for _, b in pairs]
    cotangents = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in outs]
    grads_ref = torch.autograd.grad(outs_ref, leaves, cotangents, allow_unused=True)
    grads_fast = torch.autograd.grad(outs, leaves, cotangents, allow_unused=True)
    for i, (a, b) in enumerate(zip(grads_fast, grads_ref)):
        a = torch.zeros_like(leaves[i]) if a is None else a
        b = torch.zeros_like(leaves[i]) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"gradient of input {i}: {m}")


@pytest.mark.parametrize("chunk_size", [1, 8, 16, 64])
@pytest.mark.parametrize("T", [1, 7, 63, 100])
@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_chunk_presets(preset, T, chunk_size):
    assert_equivalent(presets.get(preset), T, chunk_size)


@pytest.mark.parametrize("huber_form", ["norm", "coordinate"])
@pytest.mark.parametrize("T, chunk_size", [(7, 1), (63, 8), (100, 64)])
def test_chunk_yaad_huber_forms(huber_form, T, chunk_size):
    assert_equivalent(presets.yaad(huber_form=huber_form), T, chunk_size)


@pytest.mark.parametrize(
    "index, spec", list(enumerate(_random_specs(24))), ids=lambda x: str(x) if isinstance(x, int) else ""
)
@pytest.mark.parametrize("T, chunk_size", [(7, 1), (63, 8), (100, 16)])
def test_chunk_random_specs(index, spec, T, chunk_size):
    assert_equivalent(spec, T, chunk_size, seed=index)


@pytest.mark.parametrize("preset", ["moneta", "yaad", "memora", "titans", "gated_deltanet"])
@pytest.mark.parametrize("split", [16, 17, 21])  # a chunk boundary, just after a lag token, inside a chunk
def test_chaining(preset, split):
    spec = presets.get(preset)
    T, chunk_size = 40, 8
    q, k, v, gates, state, _ = make_inputs(spec, T=T)
    o_full, s_full = run_op(chunk_miras, spec, q, k, v, gates, state, chunk_size)

    def part(x, lo, hi):
        return None if x is None else x[:, lo:hi]

    first = {n: part(g, 0, split) for n, g in gates.items()}
    second = {n: part(g, split, T) for n, g in gates.items()}
    o1, s1 = run_op(chunk_miras, spec, q[:, :split], k[:, :split], v[:, :split], first, state, chunk_size)
    o2, s2 = run_op(chunk_miras, spec, q[:, split:], k[:, split:], v[:, split:], second, s1, chunk_size)
    torch.testing.assert_close(torch.cat([o1, o2], dim=1), o_full, rtol=1e-10, atol=1e-10)
    for a, b in zip(_state_tensors(s2), _state_tensors(s_full), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _hand_written_gated_delta_rule(q, k, v, beta, alpha, S0):
    """S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t v_t k_tᵀ (S is [V, K]), o_t = S_t q_t. No library code."""
    B, T, H, _ = q.shape
    S = S0.clone()
    outs = []
    for t in range(T):
        kt, vt, qt = k[:, t], v[:, t], q[:, t]  # [B, H, K], [B, H, V]
        a, b = alpha[:, t, :, None, None], beta[:, t, :, None, None]
        Sk = torch.einsum("bhvk,bhk->bhv", S, kt)
        S = a * S - a * b * torch.einsum("bhv,bhk->bhvk", Sk, kt) + b * torch.einsum("bhv,bhk->bhvk", vt, kt)
        outs.append(torch.einsum("bhvk,bhk->bhv", S, qt))
    return torch.stack(outs, dim=1), S


@pytest.mark.parametrize("mode", ["chunk", "naive"])
def test_gated_deltanet_is_the_gated_delta_rule(mode):
    spec = presets.gated_deltanet()
    q, k, v, gates, state, _ = make_inputs(spec, T=33, V=5)
    fn = chunk_miras if mode == "chunk" else naive_recurrent_miras
    o, s = run_op(fn, spec, q, k, v, gates, state, 1)
    o_ref, S_ref = _hand_written_gated_delta_rule(q, k, v, gates["eta"], gates["alpha"], state.memory[0])
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s.memory[0], S_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)])
def test_low_precision_matches_float64(dtype, tol):
    """float32/bfloat16 inputs compute in float32 with a float32 state; compare with float64 on the same (rounded)
    inputs, so that only the op's own arithmetic and the output rounding count."""
    spec = presets.moneta()
    q, k, v, gates, state, _ = make_inputs(spec, T=50, K=8, V=8)
    low = {n: None if g is None else g.to(dtype) for n, g in gates.items()}
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    o, s = run_op(chunk_miras, spec, q, k, v, low, type(state)(tuple(w.float() for w in state.memory)), 16)
    assert o.dtype == dtype and s.memory[0].dtype == torch.float32
    as64 = {n: None if g is None else g.double() for n, g in low.items()}
    o64, _ = run_op(chunk_miras, spec, q.double(), k.double(), v.double(), as64, state, 16)
    torch.testing.assert_close(o.double(), o64, rtol=tol, atol=tol)


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_float32_finite_for_large_norm_inputs(preset):
    spec = presets.get(preset)
    q, k, v, gates, state, _ = make_inputs(spec, T=70, K=8, V=8, dtype=torch.float32)
    # huge queries and values, keys large too (with a step size that keeps the inner GD stable), big Huber δ
    q, v = q * 1e4, v * 1e4
    k = k * 30.0
    gates["eta"] = gates["eta"] / 1e4
    if gates["delta"] is not None:
        gates["delta"] = gates["delta"] * 1e4
    q.requires_grad_(True)
    o, s = run_op(chunk_miras, spec, q, k, v, gates, state, 16)
    assert torch.isfinite(o).all()
    assert all(torch.isfinite(w).all() for w in s.memory)
    o.square().mean().backward()
    assert torch.isfinite(q.grad).all()


@pytest.mark.parametrize("preset", ["gated_deltanet", "mamba2", "titans", "yaad", "moneta", "memora"])
def test_gates_of_zero_are_hard_resets(preset):
    """α = 0 and θ = 0 (a hard reset) at a chunk's first token (the lag token of a non-linear retention), inside a
    chunk and at its last: the token loop's outputs, state and gradients, except the zero gates' own gradients,
    which the log-space decays leave at 0 (miras/ops/README.md section 2, "Gates near 0"); a lag token's step takes
    its gates as they are, so its gradients are exact."""
    spec = presets.get(preset)
    lag = [8] if spec.nonlinear_retention else []
    erased = [t for t in [3, 7, 8, 13] if t not in lag]
    q, k, v, gates, state, leaves = make_inputs(spec, T=21, requires_grad=True)
    with torch.no_grad():
        for name in ("alpha", "momentum"):
            if gates[name] is not None:
                gates[name][:, erased + lag] = 0.0
    o_ref, s_ref = run_op(naive_recurrent_miras, spec, q, k, v, gates, state, 8)
    o, s = run_op(chunk_miras, spec, q, k, v, gates, state, 8)
    torch.testing.assert_close(o, o_ref, rtol=1e-9, atol=1e-9)
    for a, b in zip(_state_tensors(s), _state_tensors(s_ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    got = torch.autograd.grad([o, *s.memory], leaves, [torch.ones_like(o), *map(torch.ones_like, s.memory)])
    want = torch.autograd.grad([o_ref, *s_ref.memory], leaves, [torch.ones_like(o), *map(torch.ones_like, s.memory)])
    for leaf, a, b in zip(leaves, got, want, strict=True):
        if any(leaf is gates[name] for name in ("alpha", "momentum")):
            assert (a[:, erased] == 0).all()
            a, b = a[:, [t for t in range(21) if t not in erased]], b[:, [t for t in range(21) if t not in erased]]
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("retention", ["lq", "kl", "elastic"])
@pytest.mark.parametrize("q_exponent", [1.5, 4.0])
def test_zero_accumulator_has_finite_gradients(retention, q_exponent):
    """A zero initial memory (the linear default) sits on every non-smooth point of the retention maps."""
    spec = MemorySpec(memory="linear", bias="lp", retention=retention, q=q_exponent)
    q, k, v, gates, _, leaves = make_inputs(spec, T=20, requires_grad=True)
    zero = torch.zeros(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    o, _ = run_op(chunk_miras, spec, q, k, v, gates, zero, 8)
    grads = torch.autograd.grad(o.square().sum(), [*leaves[:5], zero])  # q, k, v, eta, alpha and the state
    assert all(torch.isfinite(g).all() for g in grads)


def _exact_forms() -> list[dict]:
    """Specs with abs_eps = 0 (no smoothing): biases with p across the boundaries of |e|^r's smoothness, both signs,
    and the lq mirror map across q = 2."""
    fields = [{"bias": "robust"}, {"bias": "l2", "retention": "lq", "lq_map": "mirror", "q": 1.5}]
    fields += [{"bias": "l2", "retention": "lq", "lq_map": "mirror", "q": q} for q in (2.0, 3.0)]
    fields += [{"bias": "lp", "p": p, "sign_sharpness": s} for p in (1.0, 1.5, 2.0, 2.5, 3.0, 4.0) for s in (0.0, 10.0)]
    return fields


@pytest.mark.parametrize("fields", _exact_forms(), ids=str)
def test_abs_eps_zero_is_refused_or_finite_at_zero(fields):
    """A spec with abs_eps = 0 is either refused, naming abs_eps, or has finite outputs and gradients where the
    residual and the accumulator are exactly 0 (zero initial memory and zero values)."""
    try:
        spec = MemorySpec(memory="linear", abs_eps=0.0, **fields)
    except ValueError as error:
        assert "MemorySpec.abs_eps=0 with" in str(error)
        return
    q, k, _, gates, _, leaves = make_inputs(spec, T=12, requires_grad=True)
    v = torch.zeros_like(q, requires_grad=True)
    zero = torch.zeros(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    o, _ = chunk_miras(q, k, v, gates["eta"], gates["alpha"], spec=spec, chunk_size=4, initial_state=zero)
    grads = torch.autograd.grad(o.sum(), [q, k, v, gates["eta"], zero])
    assert torch.isfinite(o).all() and all(torch.isfinite(g).all() for g in grads)
