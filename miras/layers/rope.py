"""Rotary position embeddings (RoPE), Llama's rotate-half convention, computed on the fly for any position."""

from __future__ import annotations

import torch
from torch import nn


class RotaryEmbedding(nn.Module):
    """Rotates pairs (x_i, x_{i+D/2}) of each head by position * theta^(-2i/D).

    Frequencies and cos/sin are built per call in float32 (float64 for float64 inputs): no buffer that a
    `model.to(bfloat16)` could round, and no maximum length.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x [B, T, H, D] at positions offset .. offset+T-1 -> the rotated x, same shape and dtype."""
        T = x.shape[1]
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        inv_freq = self.theta ** (-torch.arange(0, self.head_dim, 2, device=x.device, dtype=dt) / self.head_dim)
        pos = torch.arange(offset, offset + T, device=x.device, dtype=dt)
        angles = pos[:, None] * inv_freq[None, :]  # [T, D/2]
        cos = torch.cat([angles.cos(), angles.cos()], dim=-1)[None, :, None, :]  # [1, T, 1, D]
        sin = torch.cat([angles.sin(), angles.sin()], dim=-1)[None, :, None, :]
        xf = x.to(dt)
        half = self.head_dim // 2
        rotated = torch.cat([-xf[..., half:], xf[..., :half]], dim=-1)
        return (xf * cos + rotated * sin).to(x.dtype)
