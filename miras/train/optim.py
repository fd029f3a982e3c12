"""The optimizer and its schedule: AdamW with weight decay on weight matrices only, and warm-up + cosine.

Every model this library trains goes through `build_optimizer`: `miras train`, the experiments (compare, ablations)
through it, and MQAR's small loop (miras.experiments.mqar) directly, so all train with the same update.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from miras.layers.weight_decay import NO_WEIGHT_DECAY


def exempt_names(model: nn.Module) -> set[str]:
    """Names of the parameters not to decay: those their module marked (miras/layers/weight_decay.py), and every
    other vector (biases and scales; ndim < 2). Read from the unwrapped model before parallelize: FSDP's sharded
    parameters are new objects without the mark, but keep their names."""
    return {name for name, p in model.named_parameters() if getattr(p, NO_WEIGHT_DECAY, False) or p.ndim < 2}


def param_groups(model: nn.Module, weight_decay: float, exempt: set[str] | None = None) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only; `exempt` (default `exempt_names(model)`) gets none."""
    exempt = exempt_names(model) if exempt is None else exempt
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights are listed once
        if p.requires_grad:
            (no_decay if name in exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """LR multiplier for optimizer step s (0-based): linear warm-up to 1 over `warmup` steps, then a cosine down to
    `min_ratio` at step `total` - 1, the last step a run of `total` steps takes. `total` is None until a time budget
    has been turned into steps (the multiplier stays 1 meanwhile). A callable object rather than a closure so that
    LambdaLR's state_dict saves its fields."""

    def __init__(self, warmup: int, total: int | None, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - 1 - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    warmup: int,
    total: int | None,
    min_ratio: float,
    device: torch.device,
    exempt: set[str] | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR, WarmupCosine]:
    """(AdamW, its LambdaLR, the schedule) for `model`'s parameters. Fused AdamW on CUDA, the default elsewhere. Under
    FSDP pass the sharded model and the `exempt_names` of the model before sharding."""
    optimizer = torch.optim.AdamW(
        param_groups(model, weight_decay, exempt), lr=lr, betas=betas, fused=True if device.type == "cuda" else None
    )
    schedule = WarmupCosine(warmup, total, min_ratio)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule
