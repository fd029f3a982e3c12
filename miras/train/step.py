"""One optimizer step: every model this library trains (`train`, MQAR's small loop) steps through `train_step`."""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None = None,
    reduce: Callable[[float], float] | None = None,
) -> tuple[float, float]:
    """One optimizer step over gradient-accumulation micro-batches of (input_ids, labels) [B, T], labels already
    shifted (labels[:, t] follows input_ids[:, t]). Returns (mean loss, gradient norm before clipping), brought to
    the host together: the step's one device-to-host synchronization.

    When either is not finite the update is skipped (weights and AdamW moments unchanged) and the scheduler still
    advances; the caller decides whether the run goes on (divergence.py).
    `model` may be DDP- or FSDP-wrapped; the gradient norm is then the global one, and `reduce` (the trainer passes
    Distributed.mean) turns this rank's loss into the global batch's before the skip is decided, so that every rank
    decides alike."""
    optimizer.zero_grad(set_to_none=True)
    total = None  # the summed losses, float64 on the device: no synchronization per micro-batch
    no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce the gradients in the last backward only
    for i, (input_ids, labels) in enumerate(micro_batches):
        with no_sync() if no_sync and i < len(micro_batches) - 1 else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                logits = model(input_ids).logits  # [B, T, V]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            (loss / len(micro_batches)).backward()
        total = loss.detach().double() if total is None else total + loss.detach().double()
    clip = grad_clip if grad_clip > 0 else math.inf  # inf: only measure the norm
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor (replicated: every rank holds the global norm)
        grad_norm = grad_norm.full_tensor()
    loss, grad_norm = torch.stack([total / len(micro_batches), grad_norm.double()]).tolist()
    if reduce is not None:
        loss = reduce(loss)
    if math.isfinite(loss) and math.isfinite(grad_norm):
        optimizer.step()
    scheduler.step()
    return loss, grad_norm
