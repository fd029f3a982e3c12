"""Layers: the parallel forward ≡ token-by-token step() ≡ prefill + steps ≡ chained segments, in float64 (the
specification), for every preset; attention, conv and RoPE pieces; gate initialization."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from miras import presets
from miras.config import ModelConfig
from miras.layers import Attention, MirasLayer, RotaryEmbedding, ShortConvolution
from miras.layers.miras_layer import eta_max

T, CHUNK = 11, 4  # 11 tokens: two full chunks and a partial one


def _config(preset: str, **overrides) -> ModelConfig:
    fields = dict(preset=preset, vocab_size=32, hidden_size=16, num_heads=2, chunk_size=CHUNK, gate_rank=4)
    return ModelConfig(**{**fields, **overrides})


def _layer(preset: str, mode: str = "chunk", **overrides) -> MirasLayer:
    torch.manual_seed(0)
    layer = MirasLayer(_config(preset, **overrides), 0, mode).double()
    with torch.no_grad():  # nn.Linear's default init is small; larger weights make the comparison meaningful
        for p in layer.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.5)
    return layer


def _steps(layer, x: torch.Tensor, cache) -> tuple[torch.Tensor, object]:
    ys = []
    for t in range(x.shape[1]):
        y, cache = layer.step(x[:, t], cache)
        ys.append(y)
    return torch.stack(ys, dim=1), cache


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"{what}: {m}")


def _close_gradient(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Gradients here reach ~1e3 (weights N(0, 0.5)), and a different but equally exact order of the float64 sums
    moves every entry by ~1e-12 of the largest: the absolute tolerance scales with the tensor, not with each entry."""
    atol = 1e-10 * max(1.0, float(b.abs().max()))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_step(preset):
    layer = _layer(preset)
    x = torch.randn(2, T, 16, dtype=torch.float64)
    y, _ = layer(x)
    y_steps, cache = _steps(layer, x, layer.allocate_cache(2))
    _close(y_steps, y, "step() vs forward")
    assert cache.position == T and cache.state.offset == (0 if layer.spec.per_token else T % CHUNK)
    split = 6  # inside the second chunk
    y1, cache = layer(x[:, :split], layer.allocate_cache(2))
    y2, _ = _steps(layer, x[:, split:], cache)
    _close(torch.cat([y1, y2], dim=1), y, "prefill + step() vs forward")


@pytest.mark.parametrize("preset", ["moneta", "yaad", "memora", "gated_deltanet", "retnet"])
@pytest.mark.parametrize("split", [4, 7])  # a chunk boundary, and inside a chunk
def test_chaining(preset, split):
    layer = _layer(preset)
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    y1, cache = layer(x[:, :split], layer.allocate_cache(2))
    y2, _ = layer(x[:, split:], cache)
    _close(torch.cat([y1, y2], dim=1), y, "two segments vs one call")
    leaves = [x, *layer.parameters()]
    grads = torch.autograd.grad(y.square().sum(), leaves, allow_unused=True)
    grads_chained = torch.autograd.grad(torch.cat([y1, y2], 1).square().sum(), leaves, allow_unused=True)
    for a, b in zip(grads_chained, grads):
        if a is not None or b is not None:
            _close_gradient(a, b, "gradient through the chained cache")


@pytest.mark.parametrize("preset", ["moneta", "titans", "ttt_linear"])
def test_recurrent_mode(preset):
    x = torch.randn(2, T, 16, dtype=torch.float64)
    _close(_layer(preset, "recurrent")(x)[0], _layer(preset, "chunk")(x)[0], "recurrent vs chunk mode")


@pytest.mark.slow  # about a minute of compiling on 2 cores; tests/ops/test_compile_steps.py covers the steps in CI
def test_compile_steps_inside_a_compiled_model():
    """The trainer's --compile: the layer compiled whole, its op outside the graph with compiled chunk steps (so the
    compile does not unroll the chunk loop). Output and every gradient equal eager's (float64, inductor reorders sums)."""
    layer = _layer("moneta")
    x = torch.randn(2, T, 16, dtype=torch.float64, requires_grad=True)
    leaves = [x, *layer.parameters()]
    y, _ = layer(x)
    grads = torch.autograd.grad(y.square().sum(), leaves)
    layer.compile_steps = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y_compiled, _ = torch.compile(layer)(x)
    # dynamo once traced a functools.cache-wrapped factory of the op here and warned of "silent incorrectness"
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    _close(y_compiled, y, "compiled layer with compiled steps vs eager")
    for a, b in zip(torch.autograd.grad(y_compiled.square().sum(), leaves), grads):
        _close(a, b, "gradient of the compiled layer")


@pytest.mark.parametrize("overrides", [dict(use_rope=False), dict(conv_size=1), dict(conv_size=2, chunk_size=1)])
def test_step_options(overrides):
    layer = _layer("yaad", **overrides)
    x = torch.randn(2, T, 16, dtype=torch.float64)
    _close(_steps(layer, x, layer.allocate_cache(2))[0], layer(x)[0], f"step() vs forward with {overrides}")


def test_mode_validation():
    with pytest.raises(ValueError, match="mode='fused'"):
        MirasLayer(_config("moneta"), 0, mode="fused")
    with pytest.raises(ValueError, match="preset='transformer'"):
        MirasLayer(_config("transformer"), 0)


def test_cache_batch_mismatch():
    layer = _layer("deltanet")
    with pytest.raises(ValueError, match="batch size 3"):
        layer(torch.randn(2, 5, 16, dtype=torch.float64), layer.allocate_cache(3))


def test_gates_init():
    x = torch.randn(2, 5, 16)
    moneta = MirasLayer(_config("moneta"), 0)
    eta, alpha, theta, delta = moneta._gates(x)
    assert theta is None and delta is None
    top = eta_max(moneta.spec, 8)  # lp: 1 / (fan_in of the last weight · p)
    assert top == pytest.approx(1 / (4 * 8 * 3.0))
    torch.testing.assert_close(moneta.eta_gate.bias.sigmoid() * top, torch.full((2,), 0.1 * top))
    assert ((alpha > 0.94) & (alpha < 0.995)).all()
    assert torch.equal(eta, eta[:1, :1].expand_as(eta))  # W_up = 0: every gate starts at its designed value
    with torch.no_grad():
        moneta.eta_gate.up.weight.normal_()
    assert (moneta._gates(x)[0].std(dim=(0, 1)) > 0).all()  # ... and is data-dependent once W_up learns

    # ModelConfig.eta_init moves η's starting point within the gate's range, and nothing else
    half = MirasLayer(_config("moneta", eta_init=0.5), 0)
    torch.testing.assert_close(half._gates(x)[0], torch.full_like(eta, 0.5 * top))
    assert half.eta_gate.scale == moneta.eta_gate.scale
    for bad in (0, 1, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="eta_init"):
            _config("moneta", eta_init=bad)

    # δ starts at 2·√head_dim (head dim 8 here), above the initial error's norm √(2·head_dim); delta_init sets it
    yaad = MirasLayer(_config("yaad"), 0)
    assert _config("yaad").delta_init is None  # the rule, kept: a copy at another head dim derives its own δ
    torch.testing.assert_close(yaad._gates(x)[3].mean(), torch.tensor(2 * 8**0.5), atol=0.1, rtol=0)
    narrow = MirasLayer(_config("yaad", delta_init=1.0), 0)  # the start before issue 23
    torch.testing.assert_close(narrow._gates(x)[3].mean(), torch.tensor(1.0), atol=0.1, rtol=0)
    wide = MirasLayer(dataclasses.replace(_config("yaad"), head_dim=32), 0)
    torch.testing.assert_close(wide._gates(x)[3].mean(), torch.tensor(2 * 32**0.5), atol=0.1, rtol=0)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="delta_init"):
            _config("yaad", delta_init=bad)
    assert MirasLayer(_config("titans"), 0)._gates(x)[2] is not None
    delta_rule = MirasLayer(_config("deltanet"), 0)
    assert eta_max(delta_rule.spec, 8) == 1.0 and delta_rule.alpha_gate is None

    retnet = MirasLayer(_config("retnet"), 0)
    eta, alpha, _, _ = retnet._gates(x)
    assert torch.equal(eta, torch.ones_like(eta))  # RetNet writes v kᵀ unscaled
    assert torch.equal(alpha, alpha[:1, :1].expand_as(alpha))  # data-independent
    torch.testing.assert_close(alpha[0, 0], torch.tensor([1 - 2**-5, 1 - 2**-6]))
    eta, alpha, _, _ = MirasLayer(_config("linear_attention"), 0)._gates(x)
    assert alpha is None and torch.equal(eta, torch.ones_like(eta))


@pytest.mark.parametrize("window", [None, 1, 3])
def test_attention(window):
    torch.manual_seed(0)
    attn = Attention(_config("transformer"), 0, window).double()
    x = torch.randn(2, T, 16, dtype=torch.float64)
    y, _ = attn(x)
    # the reference: explicit scores with the causal (and window) mask
    q, k, v = attn.qkv_proj(x).view(2, T, 3, 2, 8).unbind(2)
    q, k = attn.rope(q), attn.rope(k)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / 8**0.5
    t, s = torch.arange(T)[:, None], torch.arange(T)[None, :]
    allowed = (s <= t) & ((t - s < window) if window else True)
    o = torch.einsum("bhts,bshd->bthd", scores.masked_fill(~allowed, float("-inf")).softmax(-1), v)
    _close(y, attn.o_proj(o.reshape(2, T, 16)), "attention vs explicit masked softmax")

    y1, cache = attn(x[:, :6], attn.allocate_cache(2))
    y2, cache = _steps(attn, x[:, 6:], cache)
    _close(torch.cat([y1, y2], 1), y, "prefill + step() vs forward")
    assert cache.position == T
    assert cache.key.shape[2] == (T if window is None else window - 1)  # the window bounds the cache


def test_conv_step():
    conv = ShortConvolution(6, 4).double()
    x = torch.randn(2, 9, 6, dtype=torch.float64)
    y, state = conv(x)
    ys, s = [], None
    for t in range(9):
        yt, s = conv.step(x[:, t], s)
        ys.append(yt)
    _close(torch.stack(ys, 1), y, "conv step vs forward")
    _close(s, state, "conv state")
    _close(state, x[:, -3:].transpose(1, 2), "the state is the last 3 inputs")


def test_rope_is_relative():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)
    dots = [(rope(q, m) * rope(k, m - 3)).sum() for m in (3, 10, 1000)]
    _close(torch.stack(dots), dots[0].expand(3), "<R_m q, R_(m-3) k> depends only on m - (m-3)")
    _close(rope(q, 0), q, "position 0 is the identity")
