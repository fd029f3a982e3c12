"""Memory architectures, called functionally on a tuple of per-head weight matrices.

Axis legend: B batch, H heads, N tokens, K key dim, V value dim, F hidden width (mlp_expansion * K).
A memory is a tuple of weights ordered from input to output, each [B, H, out, in]:
  linear: (W [B, H, V, K],)                      M(x) = W x
  mlp:    (W_1 [F, K], ..., W_L [V, F])           M(x) = x + N(W_L σ(... σ(W_1 x)))   (residual and N optional)
The paper writes the depth-2 MLP as x + LN(W1 σ(W2 x)); our W_1 is its W2 (input side).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from miras.spec import MemorySpec


def weight_shapes(spec: MemorySpec, key_dim: int, value_dim: int) -> list[tuple[int, int]]:
    """(out, in) of every weight matrix, input side first."""
    if not spec.mlp:
        return [(value_dim, key_dim)]
    if spec.mlp_residual and key_dim != value_dim:
        raise ValueError(
            f"MemorySpec.mlp_residual=True needs key_dim == value_dim (got K={key_dim}, V={value_dim}); "
            "set mlp_residual=False or use equal dims"
        )
    hidden = spec.mlp_expansion * key_dim
    dims = [key_dim] + [hidden] * (spec.mlp_depth - 1) + [value_dim]
    return [(dims[i + 1], dims[i]) for i in range(spec.mlp_depth)]


def activation(name: str, h: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(h)
    if name == "silu":
        return F.silu(h)
    if name == "relu":
        return torch.relu(h)
    return torch.tanh(h)


def activation_derivative(name: str, h: torch.Tensor) -> torch.Tensor:
    """σ'(h) in closed form (the fast path backpropagates through the memory by hand)."""
    if name == "gelu":  # exact (erf) GELU: Φ(h) + h φ(h)
        cdf = 0.5 * (1.0 + torch.erf(h * (1.0 / math.sqrt(2.0))))
        pdf = torch.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))
        return cdf + h * pdf
    if name == "silu":
        s = torch.sigmoid(h)
        return s * (1.0 + h * (1.0 - s))
    if name == "relu":
        return (h > 0).to(h.dtype)
    t = torch.tanh(h)
    return 1.0 - t * t


def output_norm(spec: MemorySpec, z: torch.Tensor) -> torch.Tensor:
    """N(z): parameter-free LayerNorm over the value dim, or identity."""
    if spec.mlp_norm == "none" or not spec.mlp:
        return z
    return F.layer_norm(z, z.shape[-1:], eps=spec.norm_eps)


def memory_forward(spec: MemorySpec, weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """M(x) for x [B, H, N, K] with weights [B, H, out, in] -> [B, H, N, V]."""
    h = x
    for i, w in enumerate(weights):
        if i > 0:
            h = activation(spec.mlp_activation, h)
        h = h @ w.transpose(-1, -2)
    y = output_norm(spec, h)
    if spec.mlp and spec.mlp_residual:
        y = x + y
    return y


def init_weights(
    spec: MemorySpec,
    batch: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, ...]:
    """A standard initial memory: zeros for linear memory, N(0, 1/fan_in) weights for the MLP."""
    dtype = dtype or torch.get_default_dtype()
    shapes = weight_shapes(spec, key_dim, value_dim)
    if not spec.mlp:
        return tuple(torch.zeros(batch, heads, o, i, dtype=dtype, device=device) for o, i in shapes)
    return tuple(
        torch.randn(batch, heads, o, i, generator=generator, dtype=dtype, device=device) / math.sqrt(i)
        for o, i in shapes
    )
