"""MQAR scoring: query-position accuracy and loss of a model on MQAR rows (`miras.data.synthetic.mqar_splits`).

Only the query positions are scored: every other label is IGNORE_INDEX, as in zoology. The scorer lives with the
trainer's MQAR task (miras/train/mqar_task.py), which evaluates with it during training; it is re-exported here beside
the other scorers. Training models on MQAR and the sweeps are experiments (miras.experiments.mqar).
"""

from __future__ import annotations

from miras.train.mqar_task import evaluate_mqar

__all__ = ["evaluate_mqar"]
