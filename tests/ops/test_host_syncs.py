"""The op reads no tensor data on the host. On a GPU every bool(tensor), .item(), float(tensor) or .tolist() is a
device-to-host synchronization that stalls the stream, so none may run per call (value checks are behind
miras.ops.debug_checks, miras/ops/debug.py)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from miras import presets
from miras.ops import chunk_miras, debug_checks, naive_recurrent_miras
from tests.ops.inputs import make_inputs, run_op

# The Python-level ways to bring a tensor's data to the host.
READS = ("__bool__", "item", "tolist", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def counted_reads():
    """Counts the calls of READS on any torch.Tensor while the block runs: {name: count}."""
    counts = dict.fromkeys(READS, 0)
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        def read(self, *args, **kwargs):
            counts[name] += 1
            return originals[name](self, *args, **kwargs)

        return read

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def _run(fn, spec, q, k, v, gates, state, chunk_size=4):
    return run_op(fn, spec, q, k, v, gates, state, chunk_size)


# moneta: an MLP memory (lq retention); yaad: huber's δ; titans: momentum; gated_deltanet: the linear-chunks path with
# per-token gradients (the delta rule's inverse); its per_chunk variant: the linear-chunks path with a partial chunk.
@pytest.mark.parametrize("preset", ["moneta", "yaad", "titans", "gated_deltanet", "gated_deltanet/per_chunk"])
@pytest.mark.parametrize("fn", [chunk_miras, naive_recurrent_miras])
def test_the_op_reads_no_tensor_data(fn, preset):
    name, _, gradients = preset.partition("/")
    spec = presets.get(name, **({"gradients": gradients} if gradients else {}))
    # T = 11 with chunks of 4: full chunks and a partial tail; then a call that continues the state mid-chunk.
    q, k, v, gates, state, _ = make_inputs(spec, T=11, dtype=torch.float32, requires_grad=True)
    with counted_reads() as counts:
        o, final = _run(fn, spec, q, k, v, gates, state)
        o2, _ = _run(fn, spec, q, k, v, gates, final)
        (o.square().sum() + o2.square().sum()).backward()
    assert counts == dict.fromkeys(READS, 0), counts
    # the calls did run, with a state left mid-chunk (per-token gradients leave no unfinished chunk)
    assert final.offset == (0 if spec.per_token else 3) and torch.isfinite(o2).all()

    with counted_reads() as counts, debug_checks():  # the switch does read: one bool() per gate given
        _run(fn, spec, q, k, v, gates, state)
    assert counts["__bool__"] == sum(g is not None for g in gates.values())
