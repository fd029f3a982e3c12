"""Causal softmax attention with RoPE: full (Transformer++) or sliding-window (the Miras "-H" hybrids), with a KV
cache for decoding. A sliding-window cache keeps only the last window - 1 keys, so decoding memory is constant."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from miras.config import ModelConfig
from miras.layers.rope import RotaryEmbedding


@dataclass(frozen=True)
class KVCache:
    """key/value [B, H, L, D] (keys already rotated) of the last L tokens; position: tokens seen so far."""

    key: torch.Tensor
    value: torch.Tensor
    position: int = 0

    def detach(self) -> "KVCache":
        return KVCache(self.key.detach(), self.value.detach(), self.position)


class Attention(nn.Module):
    """Multi-head causal attention. window=None: every earlier token; window=w: the query and the w - 1 before it."""

    def __init__(self, config: ModelConfig, layer_idx: int, window: int | None = None) -> None:
        super().__init__()
        if window is not None and window < 1:
            raise ValueError(f"window must be None or >= 1, got {window}")
        self.layer_idx = layer_idx
        self.window = window
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        inner = config.num_heads * config.head_dim
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * inner, bias=False)
        self.o_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self.rope = RotaryEmbedding(config.head_dim, config.rope_theta) if config.use_rope else None

    @property
    def residual_projections(self) -> list[nn.Linear]:
        """Projections that write into the residual stream (their init is scaled down with depth)."""
        return [self.o_proj]

    def allocate_cache(self, batch_size: int) -> KVCache:
        """The cache before the first token: no keys."""
        w = self.qkv_proj.weight
        empty = w.new_zeros(batch_size, self.num_heads, 0, self.head_dim)
        return KVCache(empty, empty)

    def _mask(self, T: int, past: int, device: torch.device) -> torch.Tensor | None:
        """[T, past + T] bool, True where query t (at position past + t) may see key j; None: plain causal."""
        if past == 0 and self.window is None:
            return None
        q_pos = torch.arange(past, past + T, device=device)[:, None]
        k_pos = torch.arange(past + T, device=device)[None, :]
        mask = k_pos <= q_pos
        if self.window is not None:
            mask = mask & (q_pos - k_pos < self.window)
        return mask

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """x [B, T, hidden] -> (y [B, T, hidden], the cache after these tokens, or None when no cache was given)."""
        B, T, _ = x.shape
        position = 0 if cache is None else cache.position
        q, k, v = self.qkv_proj(x).view(B, T, 3, self.num_heads, self.head_dim).unbind(2)  # [B, T, H, D] each
        if self.rope is not None:
            q, k = self.rope(q, position), self.rope(k, position)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if cache is not None:
            k = torch.cat([cache.key, k], dim=2)
            v = torch.cat([cache.value, v], dim=2)
        past = k.shape[2] - T
        mask = self._mask(T, past, x.device)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)  # [B, H, T, D]
        y = self.o_proj(o.transpose(1, 2).reshape(B, T, -1))
        if cache is None:
            return y, None
        if self.window is not None:  # the next query sees at most window - 1 earlier keys
            keep = max(0, k.shape[2] - (self.window - 1))
            k, v = k[:, :, keep:], v[:, :, keep:]
        return y, KVCache(k, v, position + T)

    def step(self, x: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, KVCache]:
        """One token: x [B, hidden] -> (y [B, hidden], the cache after it)."""
        y, cache = self(x.unsqueeze(1), cache)
        return y.squeeze(1), cache
