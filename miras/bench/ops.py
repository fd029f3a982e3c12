"""Op-level benchmarks of `chunk_miras`: a correctness gate, then time and peak memory over T, chunk sizes and
presets, and the side-by-side comparisons (token loop, causal SDPA, gated delta rule, matmul roof, titans-pytorch,
torch.compile). Every section returns a JSON-ready dict; times are medians of round-robin samples (timing.compare).

Inputs follow the op's contract: unit-norm q, k; η in [0.01, 0.05]; α in [0.97, 1]; θ in [0.1, 0.9]; δ in
[0.2, 1.2]. Every input, gates and the initial memory weights included, is a leaf that needs a gradient, as in a layer.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from miras import presets
from miras.bench import baselines
from miras.bench.report import say
from miras.bench.timing import Fn, Settings, Timing, compare, matmul_fn, peak_memory, rss_rise, time_call
from miras.memory.architecture import weight_shapes
from miras.ops import chunk_miras, init_state, naive_recurrent_miras
from miras.ops.linear_chunks import INVERSE_BLOCK, linear_chunks_apply
from miras.ops.torch_workarounds import compile_keeping_saved_tensors
from miras.spec import MemorySpec

# Linear-memory presets (compared with the matmul roof) and MLP-memory presets (compared with titans-pytorch): every
# preset whose memory is a matrix, and every one whose memory is a 2-layer MLP like NeuralMemory's default
# (ttt_linear's one-layer memory is neither).
LINEAR_PRESETS = tuple(name for name, preset in presets.PRESETS.items() if not preset().mlp)
MLP_PRESETS = tuple(name for name, preset in presets.PRESETS.items() if preset().mlp and preset().mlp_depth == 2)
MATMUL_SHAPE = (2048, 512, 2048)
# A grid name with this suffix times chunk_miras(compile_steps=True): the chunks' steps under torch.compile.
COMPILE_STEPS = "+compile_steps"
SDPA = "causal SDPA"  # its entries in the grid's comparison, beside the presets' names


def grid_op(name: str) -> tuple[Callable, MemorySpec]:
    """A grid name -> (the op, the preset's spec): "moneta" is the eager op, "moneta+compile_steps" the compiled steps."""
    if name.endswith(COMPILE_STEPS):
        return functools.partial(chunk_miras, compile_steps=True), presets.get(name.removesuffix(COMPILE_STEPS))
    return chunk_miras, presets.get(name)


class CorrectnessError(AssertionError):
    """The fast op (or a baseline) disagrees with its reference: no timing is worth reporting."""


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    head_dim: int  # K = V


@dataclass(frozen=True)
class OpCall:
    """One call of a Miras op (chunk_miras, naive_recurrent_miras or a compiled one) on fixed inputs."""

    op: Callable
    spec: MemorySpec
    chunk_size: int
    args: tuple
    kwargs: dict
    leaves: list

    def output(self) -> torch.Tensor:
        return self.op(*self.args, spec=self.spec, chunk_size=self.chunk_size, **self.kwargs)[0]

    def with_op(self, op: Callable) -> "OpCall":
        return dataclasses.replace(self, op=op)


def op_call(
    op: Callable, spec: MemorySpec, shape: Shape, T: int, chunk_size: int, device, dtype, seed: int = 0
) -> OpCall:
    B, H, D = shape.batch, shape.heads, shape.head_dim
    g = torch.Generator().manual_seed(seed)

    def gate(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(B, T, H, generator=g, dtype=torch.float64)

    q = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    eta = gate(0.01, 0.05)
    alpha = None if spec.retention == "none" else gate(0.97, 1.0)
    momentum = gate(0.1, 0.9) if spec.algorithm == "momentum" else None
    delta = gate(0.2, 1.2) if spec.bias == "huber" else None
    memory = init_state(spec, B, H, D, D, generator=g, dtype=torch.float64).memory if spec.mlp else None

    def leaf(x):
        return None if x is None else x.to(device=device, dtype=dtype).requires_grad_()

    args = tuple(leaf(x) for x in (q, k, v, eta, alpha))
    kwargs = {"momentum": leaf(momentum), "delta": leaf(delta)}
    if memory is not None:
        # The op computes in float32 whatever the input dtype; a layer keeps its initial weights in float32 too.
        kwargs["initial_state"] = tuple(
            w.to(device=device, dtype=torch.float32 if dtype != torch.float64 else dtype).requires_grad_()
            for w in memory
        )
    leaves = [
        x for x in (*args, kwargs["momentum"], kwargs["delta"], *kwargs.get("initial_state", ())) if x is not None
    ]
    return OpCall(op, spec, chunk_size, args, kwargs, leaves)


def forward_fn(output: Callable[[], torch.Tensor]) -> Fn:
    """Inference forward: no autograd graph."""

    def run():
        with torch.no_grad():
            return output()

    return run


def train_fn(output: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Fn:
    """Forward + backward to every leaf. autograd.grad, not .backward(): nothing accumulates in .grad between
    repeats, and the gradients are freed when the call returns."""

    def run():
        o = output()
        return torch.autograd.grad(o, leaves, torch.ones_like(o), allow_unused=True)

    return run


def sdpa_call(shape: Shape, T: int, device, dtype) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """Causal softmax attention with the same batch, heads and head dim (layout [B, H, T, D])."""
    qkv = [
        torch.randn(shape.batch, shape.heads, T, shape.head_dim, device=device, dtype=dtype, requires_grad=True)
        for _ in range(3)
    ]
    return (lambda: F.scaled_dot_product_attention(*qkv, is_causal=True)), qkv


def op_matmul_flops(spec: MemorySpec, B: int, T: int, H: int, K: int, V: int, chunk_size: int) -> int:
    """Forward matmul FLOPs of chunk_miras (2mkn per (m×k)@(k×n); elementwise work is not counted), following
    miras/ops/README.md section 4. Per batch element, head and chunk whose linear part has m tokens, with weights
    W_l of shape (o_l, i_l), l = 1..L:

        anchor forward  Σ 2m·i_l·o_l          deltas back through W_2..W_L  Σ_{l≥2} 2m·o_l·i_l
        dual read       Σ 2m·i_l·o_l (×2 with momentum)    scores Σ 2m²·i_l    scores·Δ  Σ 2m²·o_l
        end state       Σ 2m·i_l·o_l (×2 with momentum)    momentum's coefficients Pα·Pθ  2(m+1)³

    A non-linear retention (lq, kl, elastic) adds the exact step of each chunk's first token, the lag token (anchor
    forward and backward and its gradients: 2·Σ 2·i_l·o_l + Σ_{l≥2} 2·o_l·i_l); the chunk's segment then reads it as
    its first row, so m is the chunk's length either way.
    The full chunks of a linear memory with an affine update (linear_chunks, README section 6) count instead

        Q Kᵀ 2m²K   S V 2m²V   B_j 2mVK   reads Q̃ W_0ᵀ 2mKV   and for l2: S K 2m²K   A_j 2mK²   scan W_j A_j 2VK²

    and with per-token gradients (gradients="per_token", the exact delta rule; a short last chunk too) also
    K Kᵀ 2m²K, the blocked inverse T = (I + A)⁻¹ (`unit_lower_inverse_flops`) and K̃ = T K, Ṽ = T V 2m²(K + V).
    The sequence starts at a chunk boundary; the last chunk may be short.
    """
    shapes = weight_shapes(spec, K, V)
    io = sum(o * i for o, i in shapes)
    back = sum(o * i for o, i in shapes[1:])
    ins, outs = sum(i for _, i in shapes), sum(o for o, _ in shapes)
    lag = 1 if spec.nonlinear_retention else 0
    mom = spec.algorithm == "momentum"
    total = 0
    affine = linear_chunks_apply(spec)
    for start in range(0, T, chunk_size):
        n = min(chunk_size, T - start)
        if affine and (n == chunk_size or spec.per_token):
            total += 2 * n * n * (K + V) + 4 * n * K * V
            if spec.bias == "l2":
                total += 2 * n * n * K + 2 * n * K * K + 2 * V * K * K
            if spec.bias == "l2" and spec.per_token:
                total += 2 * n * n * K + unit_lower_inverse_flops(n) + 2 * n * n * (K + V)
            continue
        total += lag * (4 * io + 2 * back)
        total += 2 * n * io * (3 + 2 * mom) + 2 * n * back + 2 * n * n * (ins + outs) + mom * 2 * (n + 1) ** 3
    return B * H * total


def unit_lower_inverse_flops(m: int) -> int:
    """Matmul FLOPs of `linear_chunks._UnitLowerInverse`'s forward for one m×m matrix: per diagonal block of size r,
    one squaring and one product (2r³ each) per doubling step; per later block row starting at s, A_{r,<s} T_{<s,<s}
    (2r·s²) and T_rr times that (2r²·s)."""
    total = 0
    for s in range(0, m, INVERSE_BLOCK):
        r = min(INVERSE_BLOCK, m - s)
        total += (max(r - 1, 1).bit_length() - 1) * 4 * r**3
        total += 2 * r * s * s + 2 * r * r * s if s else 0
    return total


def counted_flops(fn: Fn) -> int:
    """The FLOPs torch.utils.flop_counter sees in one call (matmuls, as the analytic counts)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _ms(t: Timing | float) -> str:
    return f"{1e3 * (t.median if isinstance(t, Timing) else t):.1f} ms"


@torch.no_grad()
def _max_rel_err(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, want))


def _check_results(op: Callable, spec: MemorySpec, device, chunk_size: int, T: int) -> list[torch.Tensor]:
    """The output and the gradient of every input of `op` in float64 on a short sequence at B=1, H=2, K=V=8, from
    fixed inputs and cotangent: what the correctness checks compare between two ops."""
    call = op_call(op, spec, Shape(batch=1, heads=2, head_dim=8), T, chunk_size, device, torch.float64, seed=1)
    o = call.output()
    cotangent = torch.randn(o.shape, generator=torch.Generator().manual_seed(2), dtype=o.dtype).to(device)
    return [o, *torch.autograd.grad(o, call.leaves, cotangent)]


def check_correctness(
    preset_names: list[str], device, chunk_size: int = 16, T: int = 37, tol: float = 1e-8
) -> list[dict]:
    """chunk_miras against naive_recurrent_miras in float64 on a short sequence (two full chunks and a partial one):
    the output and the gradient of every input. Raises CorrectnessError on any disagreement above tol (relative to
    the largest entry)."""
    rows = []
    for name in preset_names:
        fast, spec = grid_op(name)
        err = _max_rel_err(*(_check_results(op, spec, device, chunk_size, T) for op in (fast, naive_recurrent_miras)))
        rows.append({"preset": name, "T": T, "chunk_size": chunk_size, "max_rel_err": err, "tol": tol})
        say(f"[check] {name}: chunk vs naive, output and all gradients, max rel err {err:.1e}")
        if not err <= tol:
            raise CorrectnessError(
                f"chunk_miras disagrees with naive_recurrent_miras for preset {name}: max rel err {err:.3e} > {tol:g}"
            )
    return rows


def run_grid(
    settings: Settings, shape: Shape, preset_names: list[str], seq_lens: list[int], chunk_sizes: list[int]
) -> list[dict]:
    """Time (fwd, fwd+bwd) and peak memory of the op for every preset × chunk size × T, one row each (sorted by
    preset, chunk size, T); causal SDPA with the same shapes is timed at the first chunk size.

    At each chunk size and T, every preset and SDPA run round-robin in one comparison, so all presets are set against
    the same SDPA samples, taken in the same minutes. Timed beside each preset separately, SDPA's median at one T
    moved by up to 20% from preset to preset on a busy host (447-548 ms at T = 4096), enough to flip which side of
    SDPA a preset came out on."""
    rows = []
    dev, dt = settings.device, settings.dtype
    preset_names = list(dict.fromkeys(preset_names))  # a name given twice is one contender
    for chunk in chunk_sizes:
        for T in seq_lens:
            fns = {}
            for name in preset_names:
                op, spec = grid_op(name)
                call = op_call(op, spec, shape, T, chunk, dev, dt)
                fns |= {(name, "fwd"): forward_fn(call.output), (name, "fwdbwd"): train_fn(call.output, call.leaves)}
            if chunk == chunk_sizes[0]:
                attn, qkv = sdpa_call(shape, T, dev, dt)
                fns |= {(SDPA, "sdpa_fwd"): forward_fn(attn), (SDPA, "sdpa_fwdbwd"): train_fn(attn, qkv)}
            timings = compare(fns, device=dev, repeats=settings.repeats, warmup=settings.warmup)
            tokens = shape.batch * T
            measured = {
                key: t.to_dict() | {"tokens_per_s": tokens / t.median, "peak_bytes": peak_memory(fns[key], dev)}
                for key, t in timings.items()
            }
            sdpa = {kind: m for (name, kind), m in measured.items() if name == SDPA}
            for name in preset_names:
                row = {
                    "preset": name,
                    "chunk_size": chunk,
                    "T": T,
                    "tokens": tokens,
                    "fwd": measured[name, "fwd"],
                    "fwdbwd": measured[name, "fwdbwd"],
                    **sdpa,
                }
                if dev.type == "cpu":
                    row["fwdbwd"]["rss_rise_bytes"] = rss_rise(fns[name, "fwdbwd"])
                rows.append(row)
                line = f"[grid] {name} chunk={chunk} T={T}: fwd {_ms(timings[name, 'fwd'])}, fwd+bwd {_ms(timings[name, 'fwdbwd'])}"
                line += f" ({tokens / timings[name, 'fwdbwd'].median:.0f} tok/s, peak {row['fwdbwd']['peak_bytes'] / 2**20:.0f} MiB)"
                if sdpa:
                    line += f"; SDPA fwd+bwd {_ms(timings[SDPA, 'sdpa_fwdbwd'])}"
                say(line)
    order = {name: i for i, name in enumerate(preset_names)}
    return sorted(rows, key=lambda r: (order[r["preset"]], chunk_sizes.index(r["chunk_size"]), r["T"]))


def sdpa_crossover(rows: list[dict]) -> list[dict]:
    """Per preset (at the chunk size SDPA was timed with): from which T on the op's fwd+bwd beats causal SDPA's.

    measured: `crossover_T` is the smallest grid T from which the op is faster at every larger grid T, and
    `crossing_T` the crossing itself, interpolated between that T and the grid T below it (the time ratio linear in
    log-log); when the op is faster everywhere the crossing lies below the grid and is not estimated.
    extrapolated (the op is slower at the largest grid T): from there with the asymptotic laws op ∝ T (chunked) and
    SDPA ∝ T² (causal attention), i.e. the ratio SDPA/op grows ∝ T: crossing_T = T_max · t_op / t_sdpa. Not slopes
    fitted to the grid: two noisy points a factor 2 apart give slopes that differ by a few hundredths, and
    T_max · (t_op / t_sdpa)^(1 / difference) explodes (an earlier version reported 8.4e9 for Moneta). SDPA's time at
    T_max still holds sub-quadratic overhead, so the extrapolation errs early (in the op's favour)."""
    out = []
    for name in dict.fromkeys(r["preset"] for r in rows):
        timed = [r for r in rows if r["preset"] == name and "sdpa_fwdbwd" in r]
        pts = sorted((r["T"], r["fwdbwd"]["median_s"], r["sdpa_fwdbwd"]["median_s"]) for r in timed)
        entry = {
            "preset": name,
            "chunk_size": timed[0]["chunk_size"],
            "max_T": pts[-1][0],
            "ratio_sdpa_over_op": {T: s / o for T, o, s in pts},
            "faster_at_T": [T for T, o, s in pts if o < s],
        }
        tail = [i for i in range(len(pts)) if all(o < s for _, o, s in pts[i:])]
        if tail:
            i = tail[0]
            crossing = None
            if i > 0:
                (t_a, o_a, s_a), (t_b, o_b, s_b) = pts[i - 1], pts[i]
                r_a, r_b = math.log(s_a / o_a), math.log(s_b / o_b)  # r_a <= 0 < r_b
                crossing = round(math.exp(math.log(t_a) + (math.log(t_b) - math.log(t_a)) * -r_a / (r_b - r_a)))
            entry |= {"crossover_T": pts[i][0], "crossing_T": crossing, "how": "measured"}
        else:
            t_max, op, sdpa = pts[-1]
            entry |= {
                "crossover_T": None,
                "crossing_T": round(t_max * op / sdpa),
                "how": f"extrapolated from T={t_max} with op ∝ T, SDPA ∝ T²",
            }
        out.append(entry)
    return out


def run_naive(settings: Settings, shape: Shape, preset: str = "moneta", T: int = 2048, chunk: int = 64) -> dict:
    """chunk_miras (eager, and with compile_steps) vs the token loop naive_recurrent_miras, fwd+bwd, same inputs, side
    by side. The loop warms up on one chunk of tokens (its per-token cost does
    not depend on T); the compiled steps on the full length (their first call compiles)."""
    spec = presets.get(preset)
    dev, dt = settings.device, settings.dtype
    fast = op_call(chunk_miras, spec, shape, T, chunk, dev, dt)
    steps = fast.with_op(grid_op(preset + COMPILE_STEPS)[0])
    slow = fast.with_op(naive_recurrent_miras)
    short = op_call(naive_recurrent_miras, spec, shape, chunk, chunk, dev, dt)
    timings = compare(
        {
            "chunk": train_fn(fast.output, fast.leaves),
            "chunk_compile_steps": train_fn(steps.output, steps.leaves),
            "naive": train_fn(slow.output, slow.leaves),
        },
        device=dev,
        repeats={"chunk": settings.repeats, "chunk_compile_steps": settings.repeats, "naive": settings.slow_repeats},
        warmup=settings.warmup,
        warmup_fns={"naive": train_fn(short.output, short.leaves)},
    )
    speedup = timings["naive"].median / timings["chunk"].median
    speedup_steps = timings["naive"].median / timings["chunk_compile_steps"].median
    say(
        f"[naive] {preset} T={T} chunk={chunk}: chunk {_ms(timings['chunk'])}, with compile_steps "
        f"{_ms(timings['chunk_compile_steps'])}, naive {_ms(timings['naive'])}: {speedup:.1f}x, {speedup_steps:.1f}x"
    )
    return {
        "preset": preset,
        "T": T,
        "chunk_size": chunk,
        "shape": dataclasses.asdict(shape),
        "chunk": timings["chunk"].to_dict(),
        "chunk_compile_steps": timings["chunk_compile_steps"].to_dict(),
        "naive": timings["naive"].to_dict(),
        "speedup": speedup,
        "speedup_compile_steps": speedup_steps,
    }


def run_memory_scaling(
    settings: Settings,
    shape: Shape,
    preset_names: list[str],
    seq_lens: tuple[int, int] = (8192, 16384),
    chunk: int = 64,
) -> list[dict]:
    """Peak training memory (op fwd+bwd) at two lengths, and its ratio (linear in T: near the ratio of the lengths).
    On a CPU also the rise of the process's resident set (timing.rss_rise), the operating system's view."""
    rows = []
    for name in preset_names:
        fns = {}
        for T in seq_lens:
            call = op_call(chunk_miras, presets.get(name), shape, T, chunk, settings.device, settings.dtype)
            fns[T] = train_fn(call.output, call.leaves)
        peak = {T: peak_memory(fn, settings.device) for T, fn in fns.items()}
        row = {"preset": name, "chunk_size": chunk, "peak_bytes": peak, "ratio": peak[seq_lens[1]] / peak[seq_lens[0]]}
        line = (
            f"[memory] {name}: peak fwd+bwd "
            + ", ".join(f"T={T} {b / 2**20:.0f} MiB" for T, b in peak.items())
            + f": ratio {row['ratio']:.2f}"
        )
        rss = {T: rss_rise(fn) for T, fn in fns.items()} if settings.device.type == "cpu" else {}
        if rss and None not in rss.values():
            row |= {"rss_rise_bytes": rss, "rss_ratio": rss[seq_lens[1]] / rss[seq_lens[0]]}
            line += (
                "; resident set rise "
                + ", ".join(f"{b / 2**20:.0f} MiB" for b in rss.values())
                + f": ratio {row['rss_ratio']:.2f}"
            )
        rows.append(row)
        say(line)
    return rows


def _check_gdn(fn: Callable, device) -> float:
    """A chunked gated delta rule against the token loop in float64: max relative error of output and gradients."""
    g = torch.Generator().manual_seed(3)
    B, T, H, D = 2, 45, 2, 8
    q, k = (F.normalize(torch.randn(B, T, H, D, generator=g, dtype=torch.float64), dim=-1) for _ in range(2))
    v = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    beta = 0.01 + 0.04 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    alpha = 0.97 + 0.03 * torch.rand(B, T, H, generator=g, dtype=torch.float64)
    leaves = [x.to(device).requires_grad_() for x in (q, k, v, beta, alpha)]
    results = []
    for impl in (lambda *a: fn(*a, chunk_size=16), baselines.gated_delta_rule_loop):
        o = impl(*leaves[:4], leaves[4].log())
        results.append([o, *torch.autograd.grad(o, leaves, torch.ones_like(o))])
    return _max_rel_err(*results)


PER_CHUNK_GDN = "gated_deltanet/per_chunk"  # the mini-batch variant's row name


def _gated_deltanet_op(q, k, v, beta, g, chunk_size: int):
    """chunk_miras with the gated_deltanet preset in the chunked delta rules' signature (log decays g)."""
    return chunk_miras(q, k, v, beta, g.exp(), spec=presets.gated_deltanet(), chunk_size=chunk_size)[0]


def run_linear(
    settings: Settings, shape: Shape, T: int = 8192, chunk: int = 64, preset_names: tuple[str, ...] = LINEAR_PRESETS
) -> dict:
    """Linear-memory presets (fwd+bwd) beside (a) chunked gated delta rules in the WY/UT form, each checked against a
    token loop first: fla's pure-PyTorch `naive_chunk_gated_delta_rule` when fla is installed (the reference
    of the gated_deltanet comparison), and always our hand-written stand-in (solve_triangular where fla loops over the
    chunk's rows, so faster than fla's); (b) a float32 matmul, the machine's own roof: the op's achieved GFLOP/s
    (op_matmul_flops, fwd + 2× fwd for bwd) as a fraction of it, timed in the same round-robin and so with the same
    thread count. 2× is a slight over-count (the unused final state and the gradient-free zero initial state skip a
    few backward matmuls of the first and last chunk); the FLOPs torch's counter sees in one fwd+bwd are reported
    beside it.

    The same function: gated_deltanet and deltanet take per-token gradients (the exact delta rule, WY / UT form),
    and gated_deltanet is checked against the gated delta rule's token loop before anything is timed (a failure stops
    the run). `gated_deltanet/per_chunk` (gradients="per_chunk": every gradient of a chunk at its anchor, mini-batch
    GD) is a different, cheaper function, timed for information. mamba2 (= retnet's op) and linear_attention have no
    delta correction at all (they are cheaper).
    """
    dev, dt = settings.device, settings.dtype
    B, H, D = shape.batch, shape.heads, shape.head_dim
    err = _check_gdn(baselines.chunk_gated_delta_rule, dev)
    if not err <= 1e-8:
        raise CorrectnessError(
            f"the chunked gated delta rule stand-in disagrees with its token loop: max rel err {err:.3e}"
        )
    say(f"[linear] gated delta rule stand-in vs token loop: max rel err {err:.1e}")
    fla, fla_note = baselines.fla_chunk_gated_delta_rule()
    if fla is not None:
        fla_err = _check_gdn(fla, dev)
        # fla's naive version computes in float32 whatever the input dtype: float32 agreement is all it can reach.
        if not fla_err <= 1e-5:
            fla, fla_note = None, f"{fla_note} disagrees with the token loop (max rel err {fla_err:.1e}); not timed"
        else:
            fla_note = f"{fla_note}; vs the token loop: max rel err {fla_err:.1e}"
    say(f"[linear] fla: {fla_note}")
    ours = _check_gdn(_gated_deltanet_op, dev)
    if not ours <= 1e-8:
        raise CorrectnessError(
            f"chunk_miras(gated_deltanet) is not the gated delta rule: max rel err {ours:.3e} against "
            "its token loop; not comparing it with the chunked delta rules"
        )
    say(
        f"[linear] chunk_miras(gated_deltanet) vs the gated delta rule's token loop: max rel err {ours:.1e} (same function)"
    )

    specs = {name: presets.get(name) for name in preset_names}
    if "gated_deltanet" in specs:
        specs[PER_CHUNK_GDN] = presets.gated_deltanet(gradients="per_chunk")
    calls = {name: op_call(chunk_miras, spec, shape, T, chunk, dev, dt) for name, spec in specs.items()}
    gdn_in = op_call(chunk_miras, presets.gated_deltanet(), shape, T, chunk, dev, dt).leaves  # q, k, v, η, α

    def gdn(impl):
        return lambda: impl(*gdn_in[:4], gdn_in[4].log(), chunk_size=chunk)

    fns = {name: train_fn(c.output, c.leaves) for name, c in calls.items()}
    fns["gdn_standin"] = train_fn(gdn(baselines.chunk_gated_delta_rule), gdn_in)
    if fla is not None:
        fns["fla_naive_chunk"] = train_fn(gdn(fla), gdn_in)
    fns["matmul"] = matmul_fn(dev, MATMUL_SHAPE)
    timings = compare(fns, device=dev, repeats=settings.repeats, warmup=settings.warmup)
    m, k, n = MATMUL_SHAPE
    roof = 2 * m * k * n / timings["matmul"].median / 1e9
    flops = {name: 3 * op_matmul_flops(c.spec, B, T, H, D, D, chunk) for name, c in calls.items()}
    flops["gdn_standin"] = 3 * baselines.chunk_gated_delta_rule_flops(B, T, H, D, D, chunk)
    if fla is not None:  # the same matmuls, and a row-by-row substitution in place of the triangular solve
        flops["fla_naive_chunk"] = flops["gdn_standin"]
    rows = []
    for name, t in timings.items():
        if name == "matmul":
            continue
        achieved = flops[name] / t.median / 1e9
        row = {
            "name": name,
            **t.to_dict(),
            "tokens_per_s": B * T / t.median,
            "speedup_vs_standin": timings["gdn_standin"].median / t.median,
            "speedup_vs_fla": timings["fla_naive_chunk"].median / t.median if fla is not None else None,
            "flops_fwdbwd": flops[name],
            "gflops": achieved,
            "fraction_of_matmul": achieved / roof,
        }
        if name in calls:
            row["flops_fwdbwd_counted"] = counted_flops(fns[name])
        rows.append(row)
        say(
            f"[linear] {name} T={T}: fwd+bwd {_ms(t)}, {B * T / t.median:.0f} tok/s, "
            f"{achieved:.1f} GFLOP/s = {100 * achieved / roof:.1f}% of matmul"
        )
    say(f"[linear] float32 matmul {m}x{k}x{n}: {roof:.1f} GFLOP/s")
    return {
        "T": T,
        "chunk_size": chunk,
        "shape": dataclasses.asdict(shape),
        "fla": fla_note,
        "reference": "fla_naive_chunk" if fla is not None else "gdn_standin",
        "matmul": {
            "shape": list(MATMUL_SHAPE),
            "gflops": roof,
            "threads": torch.get_num_threads(),
            **timings["matmul"].to_dict(),
        },
        "rows": rows,
    }


def run_titans(
    settings: Settings,
    preset_names: tuple[str, ...] = MLP_PRESETS,
    dim: int = 256,
    heads: int = 4,
    head_dims: tuple[int | None, ...] = (None, 64),
    chunk: int = 64,
    B: int = 2,
    T: int = 1024,
    compile_steps: bool = True,
) -> dict:
    """MLP presets vs titans-pytorch's NeuralMemory, training tokens/s (fwd+bwd to the input and every parameter) on
    the same x [B, T, dim], once per head dim: None is NeuralMemory's default (dim_head = dim), the configuration
    `NeuralMemory(dim=256, chunk_size=64, heads=4)` (3.68M parameters, ~172 tok/s on 2 cores); 64 is the
    op's K = V. Ours is the op plus its projections (baselines.OpWithProjections) with the same heads, head dim and
    memory (2-layer MLP, expansion 4, GELU, LayerNorm + residual), so both sides include the q/k/v, gate and output
    projections. NeuralMemory runs twice: with its default batch_size=None, the reference of the ratios, and with
    batch_size=64 (weights updated after every chunk, like our mini-batch GD). compile_steps: each preset also runs
    as chunk_miras(compile_steps=True) (rows NAME+compile_steps). Every row of ours also gets its matmul ceiling: its
    counted fwd+bwd FLOPs at the float32 matmul rate timed in the same round-robin.
    What still differs: NeuralMemory retrieves with the weights of the last finished chunk (once per chunk), ours
    reads every token's own W_t; its momentum and decay gates are per chunk, its loss is the mean squared error with a
    learnable LayerNorm gain; each preset has its own bias and retention (titans is the closest: l2, decay, momentum).
    """
    try:
        from titans_pytorch import NeuralMemory
    except Exception as error:
        note = f"skipped: titans-pytorch not importable ({type(error).__name__}: {error}); pip install 'miras[bench]'"
        say(f"[titans] {note}")
        return {"skipped": note}
    names = [*preset_names, *(name + COMPILE_STEPS for name in preset_names if compile_steps)]
    configs = [
        _titans_config(settings, NeuralMemory, names, dim, heads, head_dim, chunk, B, T) for head_dim in head_dims
    ]
    return {
        "dim": dim,
        "heads": heads,
        "chunk_size": chunk,
        "B": B,
        "T": T,
        "configs": configs,
        "ours": "op + q/k/v, gate and output projections",
    }


def _titans_config(settings: Settings, NeuralMemory, preset_names, dim, heads, head_dim, chunk, B, T) -> dict:
    """One row of NeuralMemory variants and our presets at one head dim (None: NeuralMemory's default, dim)."""
    dev, dt = settings.device, settings.dtype
    kwargs = {} if head_dim is None else {"dim_head": head_dim}
    label = (
        "NeuralMemory("
        + ", ".join(f"{k}={v}" for k, v in {"dim": dim, "chunk_size": chunk, "heads": heads, **kwargs}.items())
        + ")"
    )
    head_dim = dim if head_dim is None else head_dim
    torch.manual_seed(0)
    reference, variant = "titans_pytorch", "titans_pytorch batch_size=64"
    modules = {
        reference: NeuralMemory(dim, chunk_size=chunk, heads=heads, **kwargs),
        variant: NeuralMemory(dim, chunk_size=chunk, batch_size=chunk, heads=heads, **kwargs),
    }
    memory_params = {name: sum(p.numel() for p in m.memory_model_parameters) for name, m in modules.items()}
    for name in preset_names:
        base = name.removesuffix(COMPILE_STEPS)
        modules[name] = baselines.OpWithProjections(
            presets.get(base), dim, heads, head_dim, chunk, compile_steps=base != name
        )
        memory_params[name] = sum(p.numel() for p in modules[name].memory)
    x = torch.randn(B, T, dim, device=dev, dtype=dt, requires_grad=True)
    x_short = torch.randn(B, 2 * chunk, dim, device=dev, dtype=dt, requires_grad=True)

    def fn(module, inp):
        def output():
            out = module(inp)
            return out[0] if isinstance(out, tuple) else out  # NeuralMemory returns (retrieved, state)

        return train_fn(output, [inp, *module.parameters()])

    for m in modules.values():
        m.to(device=dev, dtype=dt)
    theirs = (reference, variant)
    fns = {name: fn(m, x) for name, m in modules.items()}
    timings = compare(
        {**fns, "matmul": matmul_fn(dev, MATMUL_SHAPE)},
        device=dev,
        warmup=settings.warmup,
        repeats={name: settings.slow_repeats if name in theirs else settings.repeats for name in [*modules, "matmul"]},
        warmup_fns={name: fn(modules[name], x_short) for name in theirs},  # their cost is per chunk, sequential
    )
    m, k, n = MATMUL_SHAPE
    roof = 2 * m * k * n / timings.pop("matmul").median  # FLOP/s
    ref = B * T / timings[reference].median
    # The ceiling: every matmul FLOP of one fwd+bwd (counted by torch in the eager op; the compiled steps do the same
    # matmuls) at the measured matmul rate, nothing else. (FlopCounterMode's module hooks reject a leaf module input
    # under autograd.grad: count with x·1.)
    counted = {
        base: counted_flops(fn(modules[base], x * 1.0))
        for base in dict.fromkeys(name.removesuffix(COMPILE_STEPS) for name in preset_names)
    }
    rows = []
    for name, t in timings.items():
        tps = B * T / t.median
        # NeuralMemory's parameters() also hold the template MLP its per-head weights are copied from (no gradient).
        row = {
            "name": name,
            "params": sum(p.numel() for p in modules[name].parameters()),
            "memory_params": memory_params[name],
            **t.to_dict(),
            "tokens_per_s": tps,
            "speedup_vs_titans_pytorch": tps / ref,
        }
        if name not in theirs:
            flops = counted[name.removesuffix(COMPILE_STEPS)]
            row |= {
                "flops_fwdbwd_counted": flops,
                "fraction_of_matmul": flops / t.median / roof,
                "roof_tokens_per_s": B * T * roof / flops,
                "roof_speedup_vs_titans_pytorch": B * T * roof / flops / ref,
            }
        rows.append(row)
        line = f"[titans] {label}: {name}: fwd+bwd {_ms(t)}, {tps:.0f} tok/s ({tps / ref:.1f}x {reference})"
        if "roof_tokens_per_s" in row:
            line += f"; {100 * row['fraction_of_matmul']:.0f}% of matmul, at most {row['roof_speedup_vs_titans_pytorch']:.1f}x at the roof"
        say(line)
    return {
        "label": label,
        "head_dim": head_dim,
        "default_head_dim": "dim_head" not in kwargs,
        "reference": reference,
        "rows": rows,
        "matmul": {"shape": list(MATMUL_SHAPE), "gflops": roof / 1e9},
    }


def _compiled_op_error(name: str, fullgraph: bool, device, chunk_size: int = 16, T: int = 37) -> float:
    """torch.compile(chunk_miras) against the eager op in float64 on a short sequence (two full chunks and a partial
    one): max relative error over the output and the gradient of every input."""
    torch._dynamo.reset()
    ops = (chunk_miras, compile_keeping_saved_tensors(chunk_miras, fullgraph=fullgraph, dynamic=False))
    return _max_rel_err(*(_check_results(op, presets.get(name), device, chunk_size, T) for op in ops))


def run_compile(
    settings: Settings,
    shape: Shape,
    preset_names: list[str],
    T: int = 1024,
    chunk: int = 64,
    timed: bool = False,
    tol: float = 1e-8,
) -> list[dict]:
    """torch.compile of the op: graphs and graph breaks of the forward (torch._dynamo.explain; seconds). timed: also
    compile with fullgraph=True (fullgraph=False if that fails), which compiles the backward too; check the compiled
    op against eager first (output and every gradient, float64, a short sequence: a torch bug once made them differ,
    miras/ops/torch_workarounds.py), then time the first call (compilation included: minutes per preset on a CPU)
    and the fwd+bwd speed-up over eager, side by side."""
    import torch._dynamo

    rows = []
    dev, dt = settings.device, settings.dtype
    for name in preset_names:
        call = op_call(chunk_miras, presets.get(name), shape, T, chunk, dev, dt)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(chunk_miras)(*call.args, spec=call.spec, chunk_size=chunk, **call.kwargs)
        row = {
            "preset": name,
            "T": T,
            "chunk_size": chunk,
            "graph_count": explained.graph_count,
            "graph_break_count": explained.graph_break_count,
            "break_reasons": [str(b.reason) for b in explained.break_reasons[:5]],
        }
        line = f"[compile] {name} T={T}: {explained.graph_count} graph(s), {explained.graph_break_count} break(s)"
        compiled = None
        for fullgraph in (True, False) if timed else ():
            try:
                row[f"max_rel_err_fullgraph_{fullgraph}"] = err = _compiled_op_error(name, fullgraph, dev)
                if not err <= tol:
                    raise CorrectnessError(f"the compiled op disagrees with eager: max rel err {err:.3e} > {tol:g}")
                torch._dynamo.reset()  # the timed compile starts afresh (a second shape would make dims dynamic)
                candidate = call.with_op(compile_keeping_saved_tensors(chunk_miras, fullgraph=fullgraph))
                row[f"first_call_s_fullgraph_{fullgraph}"] = time_call(
                    train_fn(candidate.output, candidate.leaves), dev
                )
            except Exception as error:  # a failed or wrong compile is a result to report, not a crash
                row[f"error_fullgraph_{fullgraph}"] = f"{type(error).__name__}: {str(error)[:500]}"
                continue
            compiled, row["fullgraph"] = candidate, fullgraph
            break
        if compiled is not None:
            timings = compare(
                {"eager": train_fn(call.output, call.leaves), "compiled": train_fn(compiled.output, compiled.leaves)},
                device=dev,
                repeats=settings.repeats,
                warmup=settings.warmup,
            )
            row |= {
                "eager": timings["eager"].to_dict(),
                "compiled": timings["compiled"].to_dict(),
                "speedup": timings["eager"].median / timings["compiled"].median,
            }
            line += (
                f", fullgraph={row['fullgraph']}, eager {_ms(timings['eager'])}, compiled {_ms(timings['compiled'])}: "
                f"{row['speedup']:.2f}x"
            )
        elif timed:
            line += f"; does not compile: {row.get('error_fullgraph_False')}"
        rows.append(row)
        say(line)
    torch._dynamo.reset()
    return rows
