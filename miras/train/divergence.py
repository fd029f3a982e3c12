"""What the trainer does when a step's loss or gradient norm is not finite: the run diverged, or one batch overflowed.

- `train_step` brings the loss and the gradient norm to the host together, once per step (it needs them for the log
  anyway), and skips the update when either is not finite: the weights and AdamW moments stay as they were. The step
  still counts: its batch and its learning-rate slot are used up, so a resumed run stays exact.
- The run goes on while it has skipped at most `max_skipped_steps` steps in all (TrainConfig, default 3; the count
  is saved in checkpoints, so it holds across resumes). One more skip stops it with `Diverged`, which `miras train`
  prints as one line before it exits with status 3. A skip prints one line too. Each line gives the step, the loss,
  the likely cause, the remedy and the last good checkpoint.
- A checkpoint is saved only from finite weights (`weights_finite` runs before every save). A run therefore never
  replaces a resumable checkpoint with one it cannot resume from, and a stop leaves the run folder as the last good
  save left it.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from miras.train.config import TrainConfig
from miras.train.distributed import Distributed

EXIT_CODE = 3  # of `miras train` when a run stops on divergence (2: bad input, 130: interrupted)


class Diverged(FloatingPointError):
    """A run stopped on non-finite values; the message is the one line to show. `is_main`: rank 0's (the one that
    reports)."""

    def __init__(self, message: str, is_main: bool = True) -> None:
        super().__init__(message)
        self.is_main = is_main


def is_finite(loss: float, grad_norm: float) -> bool:
    return math.isfinite(loss) and math.isfinite(grad_norm)


def weights_finite(model: nn.Module, distributed: Distributed) -> bool:
    """Whether every parameter of `model` is finite on every rank (FSDP: each rank checks its shard). One host
    synchronization; the trainer calls it once per save."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    bad = 0.0 if bool(torch.stack([torch.isfinite(p.detach()).all() for p in local]).all()) else 1.0
    return distributed.sum([bad])[0] == 0


def skip_line(
    step: int, loss: float, grad_norm: float, skipped: int, config: TrainConfig, last_good: Path | None
) -> str:
    """The line a skipped step prints; `skipped` counts this one."""
    return (
        f"step {step}: {_values(loss, grad_norm)}: skipped its update ({skipped} of at most "
        f"{config.max_skipped_steps} skipped steps); likely cause: {_cause(config)}; if it repeats, "
        f"{_remedy(config)}; {_kept(last_good)}"
    )


def stop_line(step: int, loss: float, grad_norm: float, config: TrainConfig, last_good: Path | None) -> str:
    """The line of a run that stops: this step would have been one skip more than max_skipped_steps allows."""
    n = config.max_skipped_steps
    allowed = f"after {n} skipped step{'s' * (n != 1)} (--max-skipped-steps {n})" if n else "(--max-skipped-steps 0)"
    return (
        f"step {step}: {_values(loss, grad_norm)} {allowed}: the run diverged and stops; likely cause: "
        f"{_cause(config)}; remedy: {_remedy(config)}; {_kept(last_good)}"
    )


def unsaved_line(step: int, loss: float, config: TrainConfig, last_good: Path | None) -> str:
    """The line of a run whose weights went non-finite although its last loss and gradient norm were finite (an
    update that overflowed): the checkpoint of `step` is not written."""
    return (
        f"step {step}: the weights are not finite after an update (last loss {loss:.4g}), so this checkpoint "
        f"is not saved and the run stops; likely cause: {_cause(config)}; remedy: {_remedy(config)}; "
        f"{_kept(last_good)}"
    )


def _values(loss: float, grad_norm: float) -> str:
    return f"loss {loss:.4g}, gradient norm {grad_norm:.4g}"


def _cause(config: TrainConfig) -> str:
    cause = f"a learning rate too high for this model (--lr {config.lr:g}, --warmup-steps {config.warmup_steps}"
    return cause + (", no --grad-clip)" if config.grad_clip == -1 else ")")


def _remedy(config: TrainConfig) -> str:
    remedy = f"start a new run with a lower --lr (e.g. {config.lr / 10:g})"
    return remedy + (" and --grad-clip 1" if config.grad_clip == -1 else " or more --warmup-steps")


def _kept(last_good: Path | None) -> str:
    if last_good is None:
        return "no checkpoint was saved before this step, so there is nothing to resume"
    return f"last good checkpoint: {last_good} (kept)"
