"""The switch for the op's value checks: the gates' ranges and finiteness (η > 0, α and θ in [0, 1], δ > 0).

They are off by default. Each one reads the gate's data. On a GPU that is a device-to-host synchronization that
stalls the stream, once per gate, per layer and per call (fla's and mamba's ops do no such checks). Shape and type
checks read no data, so they always run. The layers build their gates in range (a sigmoid or softplus, clamped away
from 0), so they need no value checks. A training run that goes non-finite is caught by the trainer, from the loss
and gradient norm it already logs.

Turn the checks on to find out which gate is out of range when you pass gates by hand:

    with miras.ops.debug_checks():             # inside this block
        chunk_miras(q, k, v, eta, alpha, spec=spec)

    MIRAS_DEBUG_CHECKS=1 python script.py       # the whole process (0 or unset: off)

A gate out of range then raises, e.g. `eta must lie in (0.0, inf) (activate it before the op); found nan`. The checks
are still skipped while torch.compile traces, because reading data there would break the graph.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ENV_VAR = "MIRAS_DEBUG_CHECKS"
_ENV_VALUES = {"": False, "0": False, "1": True}

_depth = 0  # how many debug_checks() blocks are open


@contextlib.contextmanager
def debug_checks() -> Iterator[None]:
    """Run the op's value checks inside this block (it nests)."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1


def value_checks_enabled() -> bool:
    """Whether the op checks its gates' values: inside `debug_checks()`, or with MIRAS_DEBUG_CHECKS=1."""
    if _depth:
        return True
    value = os.environ.get(ENV_VAR, "").strip()
    if value not in _ENV_VALUES:
        raise ValueError(f"{ENV_VAR}={value!r} is not allowed; use 1 (check gate values) or 0 / unset (do not)")
    return _ENV_VALUES[value]
