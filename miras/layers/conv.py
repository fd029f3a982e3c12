"""Causal depthwise short convolution (kernel 4 in Titans / Gated DeltaNet / Miras) followed by SiLU, with a state
for streaming: the last kernel_size - 1 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ShortConvolution(nn.Module):
    """y_t = SiLU(sum_j w_j ⊙ x_{t-j}), j < kernel_size, per channel; inputs before the sequence are the state
    (zeros when there is none). One module can serve several projections at once (e.g. q, k and v concatenated):
    channels never mix."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))  # [C, 1, W], as nn.Conv1d (depthwise)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv1d's default (kaiming-uniform, bound 1/sqrt(kernel_size)); no bias, as Gated DeltaNet.
        bound = self.kernel_size**-0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, C], state [B, C, W-1] or None -> (y [B, T, C], new state [B, C, W-1])."""
        B, T, C = x.shape
        xt = x.transpose(1, 2)  # [B, C, T]
        if state is None:
            state = xt.new_zeros(B, C, self.kernel_size - 1)
        padded = torch.cat([state.to(xt.dtype), xt], dim=-1)  # [B, C, W-1+T]
        y = F.conv1d(padded, self.weight, groups=C)  # [B, C, T]
        new_state = padded[..., padded.shape[-1] - (self.kernel_size - 1) :]
        return F.silu(y).transpose(1, 2), new_state

    def step(self, x: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One token: x [B, C], state [B, C, W-1] or None -> (y [B, C], new state)."""
        y, state = self(x.unsqueeze(1), state)
        return y.squeeze(1), state
