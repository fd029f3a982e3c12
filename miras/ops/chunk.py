"""chunk_miras: the chunk-parallel fast path. No loop over tokens: a loop over chunks, and inside a chunk closed-form
per-token gradients at the chunk's anchor, a b×b coefficient matrix for the gates, and exact reads of every W_t
through the dual form. Derivation: miras/ops/README.md (sections 3-4; linear memories take their full chunks
through linear_chunks.py, section 6).

Axis legend: B batch, H heads, n tokens of a chunk (≤ chunk_size), K key dim, V value dim, o/i a weight's out/in dims.
Tensors are [B, H, n, D] inside; the public layout is [B, T, H, D].
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from miras.memory.architecture import activation, activation_derivative
from miras.memory.bias import upstream
from miras.memory.retention import retention_slope, retention_weights, slope_centers_rows
from miras.ops.linear_chunks import group_size, linear_chunks, linear_chunks_apply, masked_decay
from miras.ops.precision import compute_dtype, without_autocast
from miras.ops.state import TINY_GATE, MirasState, Weights, check_inputs, resolve_state
from miras.ops.torch_workarounds import compile_static
from miras.spec import MemorySpec


def _decay_products(gate: torch.Tensor) -> torch.Tensor:
    """gate [B, H, n] -> P [B, H, n+1, n+1], P[t, j] = prod_{j < l <= t} gate_l (index 0 is the chunk's base), zero
    above the diagonal: exp(L_t - L_j) from the cumulative log gates L (README section 3)."""
    logs = F.pad(torch.log(gate.clamp_min(TINY_GATE)).cumsum(-1), (1, 0))
    return masked_decay(logs, logs)


class _Coefficients(NamedTuple):
    """A chunk's gate algebra (README section 3), for t, i in 1..n (leading dims [B, H] or [B, H, N]):
    W_t = a_t W_0 + b_t S_0 - sum_{i<=t} c[t, i] g_i   and   S_n = s_end S_0 - sum_i d_end[i] g_i."""

    a: torch.Tensor  # [..., n]
    c: torch.Tensor  # [..., n, n], zero above the diagonal
    b: torch.Tensor | None  # [..., n] (momentum only, as the rest)
    s_end: torch.Tensor | None  # [...]
    d_end: torch.Tensor | None  # [..., n]

    def split(self, sizes: list[int]) -> list["_Coefficients"]:
        """A chunk-major [N, ...] batch -> consecutive runs of the given numbers of chunks."""
        return _split_fields(self, sizes, 0)

    def unbind(self) -> list["_Coefficients"]:
        """A chunk-major [N, ...] batch -> one _Coefficients per chunk (unbind, so that backward stacks once)."""
        return _unbind_fields(self)


def _split_fields(fields: NamedTuple, sizes: list[int], dim: int) -> list:
    """Every tensor of `fields` (None stays None) split along `dim` into consecutive parts of the given sizes, as
    one NamedTuple per part. torch.split: its backward concatenates once, where slicing each part would allocate a
    full-size zero gradient per part. One part is `fields` itself: no copy forward or backward."""
    if len(sizes) == 1:
        return [fields]
    parts = [None if x is None else torch.split(x, sizes, dim=dim) for x in fields]
    return [type(fields)(*(None if p is None else p[j] for p in parts)) for j in range(len(sizes))]


def _unbind_fields(fields: NamedTuple) -> list:
    """Every tensor of `fields` (None stays None) unbound along dim 0, as one NamedTuple per index."""
    parts = [None if x is None else x.unbind(0) for x in fields]
    count = len(next(p for p in parts if p is not None))
    return [type(fields)(*(None if p is None else p[j] for p in parts)) for j in range(count)]


def _coefficients(
    eta: torch.Tensor, alpha: torch.Tensor | None, theta: torch.Tensor | None, lag_row: bool = False
) -> _Coefficients:
    """Gates [..., n] -> the chunk's coefficients; any leading dims (all chunks at once when they are [N, B, H]).

    lag_row: the first token is the chunk's lag token, already applied by `_lag_step`. Its row is that of a token
    that changes nothing (a = 1, b = 0, a zero row and column of C, d_end = 0), so the segment reads it at the
    segment's base weights, which is its output, and the linear part runs on full-size matmuls (README section 7).
    """
    if lag_row:
        a, c, b, s_end, d_end = _coefficients(
            eta[..., 1:], None if alpha is None else alpha[..., 1:], None if theta is None else theta[..., 1:]
        )
        return _Coefficients(
            F.pad(a, (1, 0), value=1.0), F.pad(c, (1, 0, 1, 0)), _pad_front(b), s_end, _pad_front(d_end)
        )
    n = eta.shape[-1]
    if alpha is None:  # retention "none": every product is 1
        p_alpha = eta.new_ones(n + 1, n + 1).tril().expand(*eta.shape[:-1], n + 1, n + 1)
    else:
        p_alpha = _decay_products(alpha)
    a = p_alpha[..., 1:, 0]
    if theta is None:
        return _Coefficients(a, p_alpha[..., 1:, 1:] * eta.unsqueeze(-2), None, None, None)
    p_theta = _decay_products(theta)
    mixed = p_alpha @ p_theta  # sum_m Pα[t, m] Pθ[m, i]
    return _Coefficients(
        a,
        mixed[..., 1:, 1:] * eta.unsqueeze(-2),
        mixed[..., 1:, 0] - a,
        p_theta[..., -1, 0],
        p_theta[..., -1, 1:] * eta,
    )


def _pad_front(x: torch.Tensor | None) -> torch.Tensor | None:
    """x with a zero before its first entry on the last axis (None stays None)."""
    return None if x is None else F.pad(x, (1, 0))


def _layer_norm_stats(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = z.mean(-1, keepdim=True)
    var = ((z - mean) ** 2).mean(-1, keepdim=True)
    inv_std = torch.rsqrt(var + eps)
    return (z - mean) * inv_std, inv_std


def _times_activation_derivative(name: str, d: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """d ⊙ σ'(h). For GELU, aten's gelu_backward: one fused kernel (two in autograd's backward) where the closed
    form costs about ten elementwise passes, and as many again in autograd's backward."""
    if name == "gelu":
        return torch.ops.aten.gelu_backward(d, h)
    return d * activation_derivative(name, h)


Scales = tuple[torch.Tensor, ...] | None  # per-matrix factors [B, H, 1, 1] of weights (`retention_weights`)


def _product(x: torch.Tensor | None, y: torch.Tensor | None) -> torch.Tensor | None:
    """x * y, where None is 1."""
    if x is None or y is None:
        return y if x is None else x
    return x * y


def _row_scaled_matmul(scale: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """scale[..., t] · (x_t @ wᵀ), scaling the narrower of x and the product: the gradient of `scale` then reduces
    the smaller tensor."""
    if x.shape[-1] <= w.shape[-2]:
        return (scale.unsqueeze(-1) * x) @ w.transpose(-1, -2)
    return scale.unsqueeze(-1) * (x @ w.transpose(-1, -2))


def _anchor_gradients(
    spec: MemorySpec,
    anchor: Weights,
    k: torch.Tensor,
    v: torch.Tensor,
    delta: torch.Tensor | None,
    gamma: torch.Tensor | None,
    scales: Scales = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-token gradients at the anchor as outer products: g_{l,i} = deltas[l][i] ⊗ inputs[l][i].

    k [B, H, n, K], v [B, H, n, V], delta/gamma [B, H, n]. gamma (gradient_at="retained") scales the anchor per
    token; scales (from `retention_weights`) per matrix: the anchor's layer l is gamma ⊙ scales[l] ⊙ anchor[l],
    the factors applied to [B, H, n, out] products. Returns inputs[l] [B, H, n, in_l] and deltas[l] [B, H, n, out_l]
    (the gradient w.r.t. layer l's output).
    """
    factors = [_product(None if gamma is None else gamma.unsqueeze(-1), s) for s in scales or [None] * len(anchor)]
    inputs, pre = [], []
    x = k
    for layer, w in enumerate(anchor):
        if layer > 0:
            x = activation(spec.mlp_activation, pre[-1])
        inputs.append(x)
        h = x @ w.transpose(-1, -2)  # [B, H, n, out]
        if factors[layer] is not None:
            h = h * factors[layer]
        pre.append(h)
    z = pre[-1]
    y = z
    if spec.mlp and spec.mlp_norm == "layernorm":
        y, inv_std = _layer_norm_stats(z, spec.norm_eps)
    if spec.mlp and spec.mlp_residual:
        y = k + y
    u = upstream(spec, y, v, delta)  # [B, H, n, V]
    d = u
    if spec.mlp and spec.mlp_norm == "layernorm":
        zn = y - k if spec.mlp_residual else y
        d = inv_std * (u - u.mean(-1, keepdim=True) - zn * (u * zn).mean(-1, keepdim=True))
    deltas = [d]
    for layer in range(len(anchor) - 1, 0, -1):
        back = d @ anchor[layer]
        if scales is not None:
            back = back * scales[layer]
        d = _times_activation_derivative(spec.mlp_activation, back, pre[layer - 1])
        if gamma is not None:
            d = d * gamma.unsqueeze(-1)
        deltas.append(d)
    deltas.reverse()
    return inputs, deltas


def _dual_read(
    spec: MemorySpec,
    read0: Weights,
    mom0: Weights | None,
    coef: _Coefficients,
    inputs: list[torch.Tensor],
    deltas: list[torch.Tensor],
    q: torch.Tensor,
    scores0: torch.Tensor | None,
    read_scales: Scales = None,
    slopes: Scales = None,
) -> torch.Tensor:
    """o_t = M_{W_t}(q_t) for every token of the chunk without materializing W_t (README section 4).

    scores0 [B, H, n, n], if given, is the first layer's (Q Kᵀ) ⊙ C, computed for all chunks at once beforehand.
    read_scales: the read weights' layer l is read_scales[l] · read0[l] (a factor on the row scale a_t).
    slopes (inchunk_steps="scaled"): the in-chunk steps of layer l are slopes[l] times the accumulator's, with each
    row's mean removed for Memora (`centered_steps`): scores0 must then come from centered keys.
    """
    centered = slopes is not None and centered_steps(spec)
    x = q
    h = None
    for layer, w in enumerate(read0):
        if layer > 0:
            x = activation(spec.mlp_activation, h)
        h = _row_scaled_matmul(coef.a if read_scales is None else coef.a * read_scales[layer][..., 0], x, w)
        scores = scores0
        if layer > 0 or scores0 is None:
            written = _centered(inputs[layer]) if centered else inputs[layer]
            scores = (x @ written.transpose(-1, -2)) * coef.c
        step = scores @ deltas[layer]  # [B, H, n, out], minus what the chunk's gradients add to the read
        if mom0 is not None:
            step = step - _row_scaled_matmul(coef.b, x, _centered(mom0[layer]) if centered else mom0[layer])
        h = h - (step if slopes is None else slopes[layer] * step)
    y = h
    if spec.mlp and spec.mlp_norm == "layernorm":
        y = F.layer_norm(h, h.shape[-1:], eps=spec.norm_eps)
    if spec.mlp and spec.mlp_residual:
        y = q + y
    return y


def centered_steps(spec: MemorySpec) -> bool:
    """Whether the in-chunk read steps remove each row's mean (Memora's scaled steps, `slope_centers_rows`)."""
    return spec.inchunk_steps == "scaled" and slope_centers_rows(spec)


def _centered(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


class _Tokens(NamedTuple):
    """A window of the inputs, heads first: q, k [B, H, n, K], v [B, H, n, V], gates [B, H, n] (or None)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    eta: torch.Tensor
    alpha: torch.Tensor | None
    theta: torch.Tensor | None
    delta: torch.Tensor | None

    def split(self, sizes: list[int], dim: int = 2) -> list["_Tokens"]:
        """Consecutive windows of the given lengths along the token axis (dim 2), or runs of the given numbers of
        chunks of chunk-major tokens (dim 0)."""
        return _split_fields(self, sizes, dim)

    def unbind(self) -> list["_Tokens"]:
        """Chunk-major [N, B, H, n, ...] tokens -> one window per chunk."""
        return _unbind_fields(self)


def _segment(
    spec: MemorySpec,
    anchor: Weights | None,
    read0: Weights | None,
    mem0: Weights,
    mom0: Weights | None,
    tokens: _Tokens,
    coef: _Coefficients | None = None,
    scores0: torch.Tensor | None = None,
    keep_weights: bool = True,
    slopes: Scales = None,
) -> tuple[torch.Tensor, Weights, Weights | None, Weights | None, Weights | None, Scales]:
    """Tokens of one chunk that all take their gradient at `anchor` and update linearly: a partial head or tail
    chunk is one step of the op (with compile_steps, one compiled graph); full chunks run through `_full_chunks`.

    anchor None: the segment starts a chunk. With a non-linear retention its first token is the lag token: its step
    is `_lag_step`, and here it is only read, as a first row that changes nothing (see `_coefficients`); the anchor
    and read weights are then W_s = φ(A_s) (for the lq literal map, A_s and its scalar: never written out). With a
    linear retention the anchor is the state at the boundary. read0 is the read weights before the segment (None:
    the same as mem0). coef/scores0: precomputed for this chunk (computed here when None). keep_weights=False: the
    caller needs neither read nor anchor weights after the segment (it ends a chunk; the next chunk starts from the
    memory alone). slopes: the in-chunk steps' factors on the read weights (inchunk_steps="scaled"), from the state
    when the segment continues a chunk, from the lag step when it starts one. Returns (o [B, H, n, V], memory after,
    momentum after, read weights after (None when read0 is None), anchor after, slopes; read and anchor None when
    not keep_weights).
    """
    lag_row = anchor is None and spec.nonlinear_retention
    scales = None
    if lag_row:
        mem0, mom0, read0, scales, slopes = _lag_step(spec, mem0, mom0, tokens)
        if keep_weights:  # the state after the segment holds W_s's increments: write W_s out
            read0, scales = _scaled(read0, scales), None
        anchor = read0
    elif anchor is None:
        anchor, read0 = mem0, None
    if coef is None:
        coef = _coefficients(tokens.eta, tokens.alpha, tokens.theta, lag_row)
    gamma = coef.a if spec.gradient_at == "retained" else None
    inputs, deltas = _anchor_gradients(spec, anchor, tokens.k, tokens.v, tokens.delta, gamma, scales)
    o = _dual_read(
        spec, mem0 if read0 is None else read0, mom0, coef, inputs, deltas, tokens.q, scores0, scales, slopes
    )
    a_end = coef.a[..., -1, None, None]  # [B, H, 1, 1]
    minus_c_end = -coef.c[..., -1, :].unsqueeze(-1)  # [B, H, n, 1]
    # What the chunk adds to a_n W_0 (README section 3: W_n = a_n W_0 + b_n S_0 - Σ_i c[n, i] g_i). The read
    # weights follow the same increments from their own base: R_n = a_n R_0 + step. Signs ride on the small gate
    # vectors and each update is one addcmul: a weight-sized pass per tensor forward and backward, not two.
    step = [(d * minus_c_end).transpose(-1, -2) @ x for d, x in zip(deltas, inputs)]
    mom = None
    if mom0 is not None:
        b_end = coef.b[..., -1, None, None]
        step = [torch.addcmul(u, b_end, s) for u, s in zip(step, mom0)]
        s_end = coef.s_end[..., None, None]
        minus_d_end = -coef.d_end.unsqueeze(-1)
        mom = tuple(
            torch.addcmul((d * minus_d_end).transpose(-1, -2) @ x, s_end, s) for s, d, x in zip(mom0, deltas, inputs)
        )
    mem = tuple(torch.addcmul(u, a_end, m) for m, u in zip(mem0, step))
    if not keep_weights:
        return o, mem, mom, None, None, slopes
    read_step = step
    if slopes is not None:
        read_step = [s * (_centered(u) if centered_steps(spec) else u) for s, u in zip(slopes, step)]
    read = None if read0 is None else tuple(torch.addcmul(u, a_end, r) for r, u in zip(read0, read_step))
    anchor_end = tuple(a_end * w for w in anchor) if gamma is not None else anchor
    return o, mem, mom, read, anchor_end, slopes


def _lag_step(
    spec: MemorySpec, mem0: Weights, mom0: Weights | None, tokens: _Tokens
) -> tuple[Weights, Weights | None, Weights, Scales, Scales]:
    """The lag token of a non-linear retention (README section 1): one exact step at φ(A'), then W_s = φ(A_s).
    The lag token is the first of `tokens` (the chunk's first segment, which then reads it).
    Returns (accumulator after, momentum after, W_s as `retention_weights` gives it: weights and scales, and φ's
    slopes at A_s for inchunk_steps="scaled", else None)."""
    k, v = tokens.k[:, :, :1], tokens.v[:, :, :1]
    delta = None if tokens.delta is None else tokens.delta[:, :, :1]
    anchor, scales = retention_weights(spec, mem0)
    inputs, deltas = _anchor_gradients(spec, anchor, k, v, delta, None, scales)
    minus_eta = -tokens.eta[:, :, :1, None]  # [B, H, 1, 1]
    # -η g, with η applied to the one-token delta rather than to the weight-sized gradient
    steps = [(minus_eta * d).transpose(-1, -2) @ x for d, x in zip(deltas, inputs)]  # [B, H, out, in]
    alpha = tokens.alpha[:, :, :1, None]
    if mom0 is None:
        mom = None
        mem = tuple(torch.addcmul(u, alpha, m) for m, u in zip(mem0, steps))
    else:
        mom = tuple(torch.addcmul(u, tokens.theta[:, :, :1, None], s) for s, u in zip(mom0, steps))
        mem = tuple(torch.addcmul(s, alpha, m) for m, s in zip(mem0, mom))
    weights, scales = retention_weights(spec, mem)
    slopes = retention_slope(spec, mem, (weights, scales)) if spec.inchunk_steps == "scaled" else None
    return mem, mom, weights, scales, slopes


def _scaled(weights: Weights, scales: Scales) -> Weights:
    """The weights that (weights, scales) stand for, written out."""
    return weights if scales is None else tuple(w * s for w, s in zip(weights, scales))


def _full_chunks(
    spec: MemorySpec,
    mem: Weights,
    mom: Weights | None,
    tokens: _Tokens,
    coef: _Coefficients,
    scores: torch.Tensor | None,
) -> tuple[torch.Tensor, Weights, Weights | None]:
    """A run of G full chunks, chunk-major (tokens [G, B, H, n, ...], coef and scores [G, ...]), each one `_segment`
    that starts and ends a chunk. Returns (o [G, B, H, n, V], memory after, momentum after)."""
    outputs = []
    count = tokens.q.shape[0]
    for part, c, s in zip(tokens.unbind(), coef.unbind(), [None] * count if scores is None else scores.unbind(0)):
        o, mem, mom, _, _, _ = _segment(spec, None, None, mem, mom, part, c, s, keep_weights=False)
        outputs.append(o)
    return torch.stack(outputs), mem, mom


# Full chunks per compiled call (compile_steps). A call of several chunks fuses the elementwise work across chunk
# boundaries (a chunk's last update with the next chunk's retention map) and writes every chunk's input gradients
# into one buffer; measured side by side (Moneta fwd+bwd, T = 4096, 2 threads): 4 chunks 1.05-1.07x, 8 chunks
# 1.04-1.13x over 1 chunk per call, for a first compile of ~90 s instead of ~20 s (README section 7).
COMPILED_RUN = 8


def _run_sizes(full: int, compiled: bool) -> list[int]:
    """How many full chunks each call takes: all of them in eager; with compiled steps runs of COMPILED_RUN and the
    rest one by one, so that any T needs two graphs at most (each distinct run length is a compile of its own)."""
    if not compiled:
        return [full]
    return [COMPILED_RUN] * (full // COMPILED_RUN) + [1] * (full % COMPILED_RUN)


RECOMPILE_LIMIT = 64


@functools.cache
def _compiled(step: Callable) -> Callable:
    """A step (`_segment` or `_full_chunks`) under torch.compile with static shapes: one graph per distinct shape (a
    run of full chunks, a partial head or tail), compiled on first use and reused by every call. Its tensor
    arguments are made contiguous first: the full chunks already are (chunk_miras lays them out chunk-major), but a
    partial head's or tail's window of the [B, H, T, D] inputs has strides that depend on T, and every new stride
    would be a recompilation. Each spec, shape and dtype is a graph of its own too, so the limit on graphs per
    function is raised from dynamo's 8 (after which it warns and runs eager: a benchmark of five presets and a model
    hit it) to RECOMPILE_LIMIT."""
    compiled = compile_static(step, RECOMPILE_LIMIT)
    return lambda *args, **kwargs: compiled(*_contiguous(args), **kwargs)


def _contiguous(x):
    """x with every tensor in it (through tuples and NamedTuples) contiguous."""
    if isinstance(x, torch.Tensor):
        return x.contiguous()
    if isinstance(x, tuple):
        items = [_contiguous(item) for item in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return x


@without_autocast
def chunk_miras(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    eta: torch.Tensor,
    alpha: torch.Tensor | None,
    *,
    spec: MemorySpec,
    chunk_size: int = 64,
    momentum: torch.Tensor | None = None,
    delta: torch.Tensor | None = None,
    initial_state: MirasState | Weights | torch.Tensor | None = None,
    output_final_state: bool = False,
    compile_steps: bool = False,
) -> tuple[torch.Tensor, MirasState | None]:
    """Chunk-parallel Miras memory op; the same function as `naive_recurrent_miras` (README section 1).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        eta: [B, T, H] inner learning rate (> 0); alpha: [B, T, H] retention in [0, 1] (None for retention="none");
        momentum: [B, T, H] θ in [0, 1] (algorithm="momentum"); delta: [B, T, H] Huber δ > 0 (bias="huber").
            α and θ are taken in log space: a gate's own gradient loses digits near 0 and is 0 at exactly 0 (README
            section 2, "Gates near 0"; a gate computed through a sigmoid is not affected).
        chunk_size: tokens per chunk; every gradient in a chunk is taken at the chunk's anchor. Any T works.
        initial_state: None (zeros, linear memory only), the memory weights, or a MirasState. A state left
            mid-chunk (offset > 0) fills its chunk up to chunk_size tokens: pass the chunk_size that left it (the
            state does not record it).
        compile_steps: run the chunks' steps through torch.compile, full chunks COMPILED_RUN per call (README
            section 7): the elementwise work on the memory weights fuses (Moneta fwd+bwd ~2x at T=2048 on 2 CPU
            cores). Compiling costs ~90 s once on 2 cores, whatever T, where compiling the whole op unrolls its
            chunk loop (minutes at T=4096). The same function (tested); the first call per step shape compiles.
            No effect under an enclosing torch.compile.
    Returns:
        o [B, T, H, V] in q's dtype (computed in float32 with autocast off, or float64 for float64 input), and the final
        MirasState if output_final_state.
    """
    check_inputs(spec, q, k, v, eta, alpha, momentum, delta, chunk_size)
    compiled = compile_steps and not torch.compiler.is_compiling()
    B, T, H, K = q.shape
    dt = compute_dtype(q)
    state = resolve_state(spec, initial_state, B, H, K, v.shape[-1], dt, q.device, chunk_size)
    tokens = _Tokens(*(None if x is None else x.to(dt).transpose(1, 2) for x in (q, k, v, eta, alpha, momentum, delta)))

    # The windows: a partial head (finishing the chunk that `initial_state` left open), the full chunks, a partial
    # tail that `output_final_state` leaves open. Each is a step (`_segment` says what starts a chunk).
    head = min(T, (chunk_size - state.offset) % chunk_size)
    full = (T - head) // chunk_size
    tail = T - head - full * chunk_size
    parts = iter(tokens.split([n for n in (head, full * chunk_size, tail) if n]))
    head_part, body, tail_part = (next(parts) if n else None for n in (head, full, tail))
    steps = []  # (kind: head, full (a run of chunks), tail or linear (a group of chunks), tokens, coefficients, scores)
    if head:
        steps.append(("head", head_part, None, None))
    if full and linear_chunks_apply(spec):
        # A linear memory with an affine update takes its full chunks in a few groups of many chunks each
        # (miras/ops/linear_chunks.py).
        group = group_size(B, H, chunk_size, K)
        groups = body.split([min(group, full - j) * chunk_size for j in range(0, full, group)])
        steps += [("linear", g, None, None) for g in groups]
    elif full:
        # Chunk-major [N, B, H, n, ...] in one copy: each chunk's tensors are then contiguous, which compile_steps
        # needs (a window of [B, H, T, D] has T-dependent strides, each a recompilation) and eager matmuls like.
        # The gate coefficients and first-layer scores (Q Kᵀ) ⊙ C do not depend on the memory: computed for all full
        # chunks at once.
        body = _Tokens(
            *(None if x is None else x.unflatten(2, (full, chunk_size)).movedim(2, 0).contiguous() for x in body)
        )
        coef_all = _coefficients(body.eta, body.alpha, body.theta, spec.nonlinear_retention)
        scores = None
        if spec.gradient_at == "anchor":
            keys = _centered(body.k) if centered_steps(spec) else body.k
            scores = (body.q @ keys.transpose(-1, -2)) * coef_all.c
        sizes = _run_sizes(full, compiled)
        score_runs = [None] * len(sizes) if scores is None else torch.split(scores, sizes)
        steps += [("full", *run) for run in zip(body.split(sizes, dim=0), coef_all.split(sizes), score_runs)]
    if tail and spec.per_token:  # per-token gradients carry no chunk: the tail is a short chunk of its own
        steps.append(("linear", tail_part, None, None))
    elif tail:
        steps.append(("tail", tail_part, None, None))

    segment, full_chunks = (_compiled(_segment), _compiled(_full_chunks)) if compiled else (_segment, _full_chunks)
    mem, mom, anchor, read, slopes = state.memory, state.momentum, state.anchor, state.read, state.slope
    outputs = []
    for kind, part, coef, scores in steps:
        if kind == "linear":
            m = min(chunk_size, part.q.shape[2])  # a group of full chunks, or a per-token tail
            group = _Tokens(*(None if x is None else x.unflatten(2, (-1, m)) for x in part))
            o, w = linear_chunks(spec, mem[0], group.q, group.k, group.v, group.eta, group.alpha)
            o, mem, anchor, read, slopes = o.flatten(2, 3), (w,), (w,), None, None
        elif kind == "full":
            o, mem, mom = full_chunks(spec, mem, mom, part, coef, scores)
            o, anchor, read, slopes = o.movedim(0, 2).flatten(2, 3), None, None, None
        else:  # a head continues the chunk `initial_state` left open; a tail starts one
            if kind == "tail":
                anchor, read, slopes = None, None, None
            o, mem, mom, read, anchor, slopes = segment(spec, anchor, read, mem, mom, part, slopes=slopes)
        outputs.append(o)
    o = (outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)).transpose(1, 2).to(q.dtype)  # [B, T, H, V]
    if not output_final_state:
        return o, None
    offset = 0 if spec.per_token else (state.offset + T) % chunk_size
    if offset == 0:
        return o, MirasState(mem, mom)
    return o, MirasState(mem, mom, offset, anchor, read, slopes)
