"""The mark a module puts on parameters that weight decay must leave alone; the trainer's optimizer reads it
(miras/train/optim.py), so the trainer needs to know no module class or parameter name."""

from __future__ import annotations

from torch import nn

NO_WEIGHT_DECAY = "_no_weight_decay"


def no_weight_decay(*params: nn.Parameter) -> None:
    """Mark `params` as not to be decayed: a gate's bias sets its initial value (decay would pull it to squash(0)), a
    learned initial memory is a state, not a map, and a norm's scale is not a map either."""
    for p in params:
        setattr(p, NO_WEIGHT_DECAY, True)
