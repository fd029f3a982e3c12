"""What a run is made of: `Run`, fixed once it starts (setup.py builds it, loop.py steps it), and the `Task` it
trains on (lm_task.py, mqar_task.py). Apart from setup.py, so that the tasks can name `Run` without importing setup.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import nn

from miras.config import ModelConfig
from miras.models import MirasLM
from miras.run.folder import MetricsLog
from miras.train.config import TrainConfig
from miras.train.distributed import Distributed
from miras.train.optim import WarmupCosine


class Task(Protocol):
    """What a run trains on and how it is scored: lm_task.LMTask (text) or mqar_task.MQARTask. Batches depend only
    on (seed, index), so a resumed run sees the batches an uninterrupted one would."""

    def save(self, run_dir: Path) -> None:
        """Write what the run folder keeps of the task beyond config.json (the tokenizer)."""

    def describe(self) -> str:
        """The run log's data line."""

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Global micro-batch number `index`: (inputs, labels) [batch_size, seq_len] on the CPU, labels aligned with
        the outputs (IGNORE_INDEX where not scored)."""

    def periodic_eval(self, run: Run, step: int) -> tuple[dict, str]:
        """(the "eval" record's fields, val_loss among them; the log line). Every rank calls it."""

    def final_eval(self, run: Run, step: int) -> tuple[dict, dict, list[str]]:
        """(evaluations by set, the "final" record's fields, log lines). Every rank calls it."""


@dataclass
class Run:
    """What a run is made of; fixed once it starts (the loop's changing state is loop.RunState)."""

    config: TrainConfig
    model_config: ModelConfig
    task: Task
    run_dir: Path
    model: MirasLM  # unwrapped (checkpoints, sampling); under FSDP its parameters are the shards
    forward_model: nn.Module  # what the step calls: wrapped by DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupCosine
    distributed: Distributed
    autocast: contextlib.AbstractContextManager | None
    log: Callable[[str], None]
    metrics: MetricsLog | None  # rank 0 only
    counters: dict  # the checkpoint's progress counters; a fresh run's zeros
    history: list[dict]  # metrics.jsonl records kept from before a resume

    @property
    def main(self) -> bool:
        return self.distributed.is_main

    @property
    def device(self) -> torch.device:
        return self.distributed.device

    @property
    def local_batch(self) -> int:
        return self.config.batch_size // self.distributed.world_size
