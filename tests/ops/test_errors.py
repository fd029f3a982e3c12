"""Every invalid spec and bad input gives a clear ValueError that names the problem."""

from __future__ import annotations

import pytest
import torch

from miras import presets
from miras.ops import MirasState, chunk_miras, debug_checks, init_state, naive_recurrent_miras
from miras.spec import MemorySpec
from tests.ops.inputs import make_inputs


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"memory": "tensor"}, "MemorySpec.memory='tensor' is not allowed; choose one of 'linear', 'mlp'"),
        ({"bias": "l3"}, "MemorySpec.bias='l3'"),
        ({"retention": "forget"}, "MemorySpec.retention='forget'"),
        ({"algorithm": "adam"}, "MemorySpec.algorithm='adam'"),
        ({"mlp_activation": "swish"}, "MemorySpec.mlp_activation"),
        ({"mlp_norm": "rms"}, "MemorySpec.mlp_norm"),
        ({"gradient_at": "before"}, "MemorySpec.gradient_at"),
        ({"lq_map": "dual"}, "MemorySpec.lq_map"),
        ({"bias": "huber", "huber_form": "l1"}, "MemorySpec.huber_form='l1' is not allowed; choose one of 'mixture'"),
        ({"bias": "l2", "huber_form": "norm"}, "MemorySpec.huber_form='norm' needs bias='huber' (got bias='l2')"),
        (
            {"gradients": "per_step"},
            "MemorySpec.gradients='per_step' is not allowed; choose one of 'per_chunk', 'per_token'",
        ),
        (
            {"gradients": "per_token"},
            "MemorySpec.gradients='per_token' has no exact chunk-parallel form with memory='mlp'",
        ),
        (
            {"memory": "linear", "bias": "huber", "gradients": "per_token"},
            "exact chunk-parallel form with bias='huber'",
        ),
        ({"memory": "linear", "retention": "lq", "gradients": "per_token"}, "with retention='lq'; it is supported for"),
        ({"memory": "linear", "algorithm": "momentum", "gradients": "per_token"}, "with algorithm='momentum'"),
        ({"mlp_depth": 0}, "MemorySpec.mlp_depth=0 must be >= 1"),
        ({"mlp_depth": 2.5}, "MemorySpec.mlp_depth=2.5 must be a finite integer"),
        ({"mlp_expansion": 0}, "MemorySpec.mlp_expansion"),
        ({"mlp_residual": 1}, "MemorySpec.mlp_residual"),
        ({"p": 0.5}, "MemorySpec.p=0.5 must be >= 1"),
        ({"q": 1.0}, "MemorySpec.q=1.0 must be > 1"),
        ({"p": float("nan")}, "MemorySpec.p=nan must be a finite number"),
        ({"robust_radius": -1.0}, "MemorySpec.robust_radius"),
        ({"sign_sharpness": -2.0}, "MemorySpec.sign_sharpness"),
        ({"abs_eps": -1.0}, "MemorySpec.abs_eps"),
        ({"norm_eps": 0.0}, "MemorySpec.norm_eps=0.0 must be > 0"),
        ({"lq_floor": 0.0}, "MemorySpec.lq_floor"),
        ({"kl_scale": -1.0}, "MemorySpec.kl_scale"),
        ({"elastic_threshold": -1.0}, "MemorySpec.elastic_threshold"),
        ({"retention": "kl", "gradient_at": "retained"}, "gradient_at='retained' needs retention 'none' or 'decay'"),
        ({"bias": "lp", "p": 1.5, "abs_eps": 0.0}, "MemorySpec.abs_eps=0 with bias='lp', p=1.5 and the exact sign"),
        ({"bias": "robust", "abs_eps": 0.0}, "MemorySpec.abs_eps=0 with bias='robust' (e / ‖e‖): NaN outputs"),
    ],
)
def test_invalid_spec(fields, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MemorySpec(**fields)


def test_replace_and_from_dict_reject_unknown_fields():
    with pytest.raises(ValueError, match=r"MemorySpec has no field\(s\) \['pp'\]"):
        presets.moneta(pp=3)
    with pytest.raises(ValueError, match="no field"):
        MemorySpec.from_dict({"memory": "mlp", "colour": "red"})
    assert MemorySpec.from_dict(presets.yaad().to_dict()) == presets.yaad()


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'monetta'; choose one of moneta, yaad"):
        presets.get("monetta")


def _call(fn, spec, q, k, v, gates, state=None, chunk_size=8):
    return fn(
        q,
        k,
        v,
        gates["eta"],
        gates["alpha"],
        spec=spec,
        chunk_size=chunk_size,
        momentum=gates["momentum"],
        delta=gates["delta"],
        initial_state=state,
    )


@pytest.mark.parametrize("fn", [chunk_miras, naive_recurrent_miras])
def test_bad_tensors(fn):
    spec = presets.yaad()
    q, k, v, gates, state, _ = make_inputs(spec, T=5)
    bad = dict(gates)
    cases = [
        (dict(q=q[0]), r"q must be a 4-D tensor \[B, T, H, D\], got \[5, 2, 4\]"),
        (dict(k=k[:, :, :, :3]), r"q and k must have the same shape"),
        (dict(v=v[:, :4]), r"v must be \[B, T, H, V\] with B, T, H of q"),
        (dict(q=q.long(), k=k.long()), r"q must be floating point"),
        (dict(q=q[:, :0], k=k[:, :0], v=v[:, :0]), r"the sequence is empty"),
        (dict(gates={**bad, "eta": gates["eta"][..., None]}), r"eta must have shape \[B, T, H\] = \[2, 5, 2\]"),
        (dict(gates={**bad, "alpha": None}), r"alpha is required when retention is not 'none'"),
        (dict(gates={**bad, "delta": None}), r"delta is required when bias='huber'"),
        (dict(gates={**bad, "momentum": gates["eta"]}), r"momentum was given but the spec does not use it"),
        (dict(state=None), r"memory='mlp' needs initial_state"),
        (dict(state=state.memory[:1]), r"initial_state.memory must have shapes"),
        (dict(state="weights"), r"initial_state must be None, a tensor, a tuple of tensors or a miras.ops.MirasState"),
        (dict(state=MirasState(state.memory, offset=3)), r"initial_state.offset > 0 needs initial_state.anchor"),
        (
            dict(state=MirasState(state.memory, offset=9)),
            r"initial_state.offset=9 must be an integer in \[0, chunk_size=8\)",
        ),
        (dict(chunk_size=0), r"chunk_size must be a positive integer, got 0"),
    ]
    for change, message in cases:
        args = dict(q=q, k=k, v=v, gates=gates, state=state, chunk_size=8) | change
        with pytest.raises(ValueError, match=message):
            _call(fn, spec, **args)


@pytest.mark.parametrize("fn", [chunk_miras, naive_recurrent_miras])
def test_bad_gate_values_under_debug_checks(fn, monkeypatch):
    """Gate values are read only under the debug switch (miras/ops/debug.py): by default a bad gate gives bad outputs
    and no error, since each check would be a device-to-host synchronization."""
    spec = presets.yaad()
    q, k, v, gates, state, _ = make_inputs(spec, T=5)
    cases = [
        ({**gates, "eta": -gates["eta"]}, r"eta must lie in \(0.0, inf\) \(activate it before the op\); found -"),
        ({**gates, "alpha": gates["alpha"] + 1}, r"alpha must lie in \[0.0, 1.0\]"),
        ({**gates, "delta": gates["delta"] * float("nan")}, r"delta must lie in \(0.0, inf\).*found nan"),
    ]
    for bad, message in cases:
        o, _ = _call(fn, spec, q, k, v, bad, state)  # off: no error, and no data read
        assert o.shape == v.shape
        with debug_checks(), pytest.raises(ValueError, match=message):
            _call(fn, spec, q, k, v, bad, state)
        monkeypatch.setenv("MIRAS_DEBUG_CHECKS", "1")
        with pytest.raises(ValueError, match=message):
            _call(fn, spec, q, k, v, bad, state)
        monkeypatch.setenv("MIRAS_DEBUG_CHECKS", "0")
        _call(fn, spec, q, k, v, bad, state)
        monkeypatch.delenv("MIRAS_DEBUG_CHECKS")
    monkeypatch.setenv("MIRAS_DEBUG_CHECKS", "yes")
    with pytest.raises(ValueError, match=r"MIRAS_DEBUG_CHECKS='yes' is not allowed; use 1 .* or 0 / unset"):
        _call(fn, spec, q, k, v, gates, state)


def test_residual_needs_equal_dims():
    spec = presets.moneta()
    with pytest.raises(ValueError, match=r"mlp_residual=True needs key_dim == value_dim \(got K=4, V=6\)"):
        init_state(spec, 1, 1, 4, 6)
    q, k, v, gates, _, _ = make_inputs(spec.replace(mlp_residual=False), K=4, V=6)
    with pytest.raises(ValueError, match="mlp_residual=True needs key_dim == value_dim"):
        _call(chunk_miras, spec, q, k, v, gates, init_state(spec.replace(mlp_residual=False), 2, 2, 4, 6))


def test_momentum_state_for_gd_spec():
    spec = presets.deltanet()
    q, k, v, gates, state, _ = make_inputs(spec)
    with pytest.raises(ValueError, match="initial_state.momentum was given but the spec's algorithm is 'gd'"):
        _call(chunk_miras, spec, q, k, v, gates, MirasState(state.memory, state.memory))


def test_linear_memory_defaults_to_zeros():
    spec = presets.deltanet()
    q, k, v, gates, _, _ = make_inputs(spec)
    o, _ = _call(chunk_miras, spec, q, k, v, gates)
    o_zero, _ = _call(chunk_miras, spec, q, k, v, gates, torch.zeros(2, 2, 4, 4, dtype=q.dtype))
    torch.testing.assert_close(o, o_zero)
