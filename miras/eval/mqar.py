"""MQAR scoring: query-position accuracy and loss of a model on MQAR rows (`miras.data.synthetic.mqar_splits`).

Only the query positions are scored: every other label is IGNORE_INDEX, as in zoology. Training models on MQAR and
the sweeps are experiments (miras.experiments.mqar).
"""

from __future__ import annotations

import torch

from miras.data.synthetic import MQARBatch
from miras.metrics import NLLAccumulator
from miras.models import MirasLM


@torch.no_grad()
def evaluate_mqar(
    model: MirasLM, data: MQARBatch, *, batch_size: int = 64, device: str | torch.device = "cpu"
) -> NLLAccumulator:
    """Query-position accuracy and loss of `model` on MQAR rows (`.accuracy`, `.mean_nll` of the result)."""
    was_training = model.training
    model.eval()
    acc = NLLAccumulator()
    for lo in range(0, len(data.inputs), batch_size):
        logits = model(data.inputs[lo : lo + batch_size].to(device)).logits
        acc.update(logits, data.labels[lo : lo + batch_size].to(device))
    model.train(was_training)
    return acc


__all__ = ["evaluate_mqar"]
