"""The memory state carried between calls of the op, and the argument checks both implementations share.

Axis legend: B batch, T time, H heads, K key dim, V value dim.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from miras.memory.architecture import init_weights, weight_shapes
from miras.spec import MemorySpec

# α and θ enter in log space; a gate of exactly 0 (a full erase) becomes this instead of log(0) = -inf, whose
# gradient would be NaN. exp(log(1e-30) * 1) is 1e-30: indistinguishable from an erase in the outputs.
TINY_GATE = 1e-30

Weights = tuple[torch.Tensor, ...]


class MirasState(NamedTuple):
    """What the op carries from one call to the next (every tensor [B, H, out, in], float32 or float64).

    memory:   the carried memory: the weights W for retention "none"/"decay", the accumulator A (W = φ(A)) for
              "lq"/"kl"/"elastic".
    momentum: S, the momentum of algorithm "momentum" (None for "gd").
    offset:   how many tokens of the current chunk were already consumed; 0 at a chunk boundary.
    anchor:   (offset > 0 only) the weights at which the unfinished chunk's gradients are taken (with
              gradient_at="retained": already decayed by the α of the chunk's tokens so far).
    read:     (offset > 0 and non-linear retention only) the weights the last token was read from.
    slope:    (offset > 0, non-linear retention with inchunk_steps="scaled" only) the factor of the in-chunk steps
              on the read weights, φ's mean slope at the lag token, one [B, H, 1, 1] per weight matrix.
    Continuing from a state with offset > 0 finishes the chunk exactly as one longer call would have.
    """

    memory: Weights
    momentum: Weights | None = None
    offset: int = 0
    anchor: Weights | None = None
    read: Weights | None = None
    slope: Weights | None = None

    def detach(self) -> "MirasState":
        """The same state cut from the autograd graph (truncated backpropagation through time)."""

        def cut(ws: Weights | None) -> Weights | None:
            return None if ws is None else tuple(w.detach() for w in ws)

        return MirasState(
            cut(self.memory), cut(self.momentum), self.offset, cut(self.anchor), cut(self.read), cut(self.slope)
        )


def init_state(
    spec: MemorySpec,
    batch: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> MirasState:
    """A valid initial state for any spec: zeros for linear memory, a standard random MLP (N(0, 1/fan_in))."""
    memory = init_weights(spec, batch, heads, key_dim, value_dim, generator=generator, dtype=dtype, device=device)
    momentum = tuple(torch.zeros_like(w) for w in memory) if spec.algorithm == "momentum" else None
    return MirasState(memory, momentum)


def _check_gate(name: str, gate: torch.Tensor | None, shape: tuple[int, ...], needed: str, used: bool) -> None:
    if gate is None:
        if used:
            raise ValueError(f"{name} is required when {needed}; pass a [B, T, H] = {list(shape)} tensor")
        return
    if not used:
        raise ValueError(f"{name} was given but the spec does not use it (it is used only when {needed}); pass None")
    if not isinstance(gate, torch.Tensor) or tuple(gate.shape) != shape:
        got = list(gate.shape) if isinstance(gate, torch.Tensor) else type(gate).__name__
        raise ValueError(f"{name} must have shape [B, T, H] = {list(shape)}, got {got}")


def _check_range(name: str, gate: torch.Tensor | None, low: float, high: float | None, low_open: bool) -> None:
    # Reads the data (bool() below: a device-to-host synchronization on a GPU), so check_inputs calls it only under
    # the debug switch (debug.py); skipped while torch.compile traces so that the op compiles without graph breaks.
    if gate is None or torch.compiler.is_compiling():
        return
    g = gate.detach()
    bad = (g <= low) if low_open else (g < low)
    if high is not None:
        bad = bad | (g > high)
    bad = bad | ~torch.isfinite(g)
    if bool(bad.any()):
        bound = (
            f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
        )
        raise ValueError(f"{name} must lie in {bound} (activate it before the op); found {float(g[bad][0])}")


def check_inputs(
    spec: MemorySpec,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor | None,
    momentum: torch.Tensor | None,
    delta: torch.Tensor | None,
    chunk_size: int,
) -> None:
    """Shape and dtype checks with errors that name the argument; they read no data. The gates' ranges and
    finiteness are checked only under `miras.ops.debug_checks()` or MIRAS_DEBUG_CHECKS=1 (debug.py says why)."""
    from miras.ops.debug import value_checks_enabled

    if not isinstance(spec, MemorySpec):
        raise ValueError(f"spec must be a miras.MemorySpec, got {type(spec).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a 4-D tensor [B, T, H, D], got {got}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape [B, T, H, K], got {list(q.shape)} and {list(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with B, T, H of q {list(q.shape[:3])}, got {list(v.shape)}")
    if q.shape[1] == 0:
        raise ValueError("the sequence is empty (T = 0)")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    weight_shapes(spec, q.shape[-1], v.shape[-1])  # raises for an impossible residual
    shape = tuple(q.shape[:3])
    _check_gate("eta", eta, shape, "always", True)
    _check_gate("alpha", alpha, shape, "retention is not 'none'", spec.retention != "none")
    _check_gate("momentum", momentum, shape, "algorithm='momentum'", spec.algorithm == "momentum")
    _check_gate("delta", delta, shape, "bias='huber'", spec.bias == "huber")
    if torch.compiler.is_compiling() or not value_checks_enabled():
        return
    _check_range("eta", eta, 0.0, None, low_open=True)
    _check_range("alpha", alpha, 0.0, 1.0, low_open=False)
    _check_range("momentum", momentum, 0.0, 1.0, low_open=False)
    _check_range("delta", delta, 0.0, None, low_open=True)


def resolve_state(
    spec: MemorySpec,
    initial_state: MirasState | Weights | torch.Tensor | None,
    batch: int,
    heads: int,
    key_dim: int,
    value_dim: int,
    dtype: torch.dtype,
    device: torch.device,
    chunk_size: int,
) -> MirasState:
    """Turn the user's initial_state (None, a tensor, a tuple of weights or a MirasState) into a checked MirasState."""
    shapes = [(batch, heads, o, i) for o, i in weight_shapes(spec, key_dim, value_dim)]
    if initial_state is None:
        if spec.mlp:
            raise ValueError(
                "memory='mlp' needs initial_state (the memory's initial weights, e.g. miras.ops.init_state(...) "
                "or a layer's learned parameters)"
            )
        initial_state = init_state(spec, batch, heads, key_dim, value_dim, dtype=dtype, device=device)
    if isinstance(initial_state, torch.Tensor):
        initial_state = (initial_state,)
    if not isinstance(initial_state, MirasState):
        if not isinstance(initial_state, (tuple, list)) or not all(isinstance(w, torch.Tensor) for w in initial_state):
            raise ValueError("initial_state must be None, a tensor, a tuple of tensors or a miras.ops.MirasState")
        initial_state = MirasState(tuple(initial_state))

    def check(name: str, ws: Weights | None) -> Weights | None:
        if ws is None:
            return None
        got = [tuple(w.shape) for w in ws]
        if got != shapes:
            raise ValueError(f"initial_state.{name} must have shapes {shapes} for this spec and input, got {got}")
        return tuple(w.to(dtype) for w in ws)

    state = initial_state
    memory = check("memory", state.memory)
    momentum = check("momentum", state.momentum)
    if spec.algorithm == "momentum" and momentum is None:
        momentum = tuple(torch.zeros_like(w) for w in memory)
    if spec.algorithm != "momentum" and momentum is not None:
        raise ValueError("initial_state.momentum was given but the spec's algorithm is 'gd'")
    if spec.per_token:  # the state after any token is the memory itself: no unfinished chunk to carry
        return MirasState(memory, momentum)
    offset = state.offset
    if not isinstance(offset, int) or not 0 <= offset < chunk_size:
        raise ValueError(f"initial_state.offset={offset!r} must be an integer in [0, chunk_size={chunk_size})")
    anchor = check("anchor", state.anchor)
    read = check("read", state.read)
    if offset > 0 and anchor is None:
        raise ValueError("initial_state.offset > 0 needs initial_state.anchor (the unfinished chunk's anchor)")
    if offset > 0 and spec.nonlinear_retention and read is None:
        raise ValueError("initial_state.offset > 0 with a non-linear retention needs initial_state.read")
    scaled = offset > 0 and spec.inchunk_steps == "scaled"
    slope = state.slope
    if scaled:
        slope_shapes = [(batch, heads, 1, 1)] * len(shapes)
        if slope is None or [tuple(s.shape) for s in slope] != slope_shapes:
            got = None if slope is None else [tuple(s.shape) for s in slope]
            raise ValueError(
                f"initial_state.offset > 0 with inchunk_steps='scaled' needs initial_state.slope of shapes "
                f"{slope_shapes}, got {got}"
            )
        slope = tuple(w.to(dtype) for w in slope)
    return MirasState(
        memory, momentum, offset, anchor if offset else None, read if offset else None, slope if scaled else None
    )
