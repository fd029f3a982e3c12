"""Recall capacity of one memory, at the op level: how many key-value pairs a single head of each preset stores
and gives back when it is written once, with hand-set (not learned) projections and gates. Nothing is trained.

Protocol of `recall_accuracy` (one head, float32, `trials` independent sets of pairs as the batch):

- keys k_1..k_N: independent random unit vectors in R^D (Gaussian, l2-normalized, as the layer normalizes k). For
  N > D they cannot be orthogonal, so interference is part of what is measured.
- values v_1..v_N: Gaussian N(0, 1) entries, then RMS-normalized to norm √D when the memory's output passes the
  parameter-free LayerNorm (the layer's `normalize_values`: such a memory can only output vectors of norm ≈ √D).
  A linear memory starts at W = 0 and its update is linear in v, so its reads (and the score) do not depend on the
  values' scale.
- tokens 1..N write pair i: k = q = k_i, v = v_i, inner step η, retention α (default 1: no forgetting), momentum
  θ = 0.5 and Huber δ = 1 (the layer's initial θ and δ). q does not matter while writing.
- tokens N+1..2N read: q = k = k_π(j) for a random permutation π (a new one per trial), v = 0, η·QUERY_ETA,
  α = 1. The read token is a token of the same sequence (the op reads after its own update), so its write must be
  negligible: η·1e-9 moves the memory by ~1e-9 of a write. v = 0 rather than v_π(j): a query must not carry its
  answer, and with v = 0 its (tiny) write can only pull the read away from the stored value, never towards it. α = 1
  on the reads so that every query sees the same memory, the one the N writes left (with α < 1 the later queries
  would see a further decayed memory; the layer's forgetting is measured on the writes, `alpha=`). θ stays 0.5:
  momentum keeps applying the writes' gradients for a few tokens (the total step of a write is η/(1 − θ) = 2η),
  and that carry-over is part of how titans writes.
- the initial memory is the layer's: zeros for linear memories, `init_state` (N(0, 1/fan_in) weights, a fresh draw
  per trial) for MLP memories; for non-linear retentions (moneta, memora) that draw is the accumulator, as the
  layer passes it.
- accuracy: the fraction of the N·trials queries whose read o (the op's output, residual included) has its largest
  cosine with the right value among that trial's N stored values. Chance is 1/N.

`chunk_size` is the op's: at 64 (the model default) per-chunk presets take every gradient of a chunk at the chunk's
start (mini-batch GD), per-token presets (the delta-rule family and the dot-bias ones) are the exact recurrence at
every chunk size; chunk 1 is the per-token rule for every preset.

η: the layer sets η = η_max·sigmoid(·), starting at 0.1·η_max (`eta_max` in miras/layers/miras_layer.py). The
grid `ETA_SCALES` is in units of η_max. Dot-bias presets (linear_attention, retnet, mamba2) start from W = 0 and their
write v kᵀ does not depend on W, so η scales the whole memory and the argmax of the cosine cannot change with it:
their rows are flat (linear_attention and retnet fix η ≡ 1 in the layer; mamba2's gate starts at 0.1).

`python -m miras.eval.capacity [--out runs/capacity]` prints the tables and writes capacity.json and capacity.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from miras.config import PRESET_GATES
from miras.io_atomic import write_text_atomic
from miras.layers.miras_layer import alpha_init, eta_max
from miras.ops import chunk_miras, init_state
from miras.presets import PRESETS, get
from miras.spec import MemorySpec

N_PAIRS = (4, 8, 16, 32, 64, 128)
ETA_SCALES = (0.03, 0.1, 0.3, 1.0, 2.0)  # × η_max: below the layer's initial 0.1, up to η_max and beyond
CHUNKS = (64, 1)
QUERY_ETA = 1e-9  # a read token's step, relative to the writes' η
THETA, DELTA = 0.5, 1.0  # the layer's initial momentum and Huber δ
CAPACITY_LEVEL = 0.9  # "capacity" = the largest N of the grid recalled at least this well
FORGET_N = 32  # the N at which the layer's initial α is measured: between its horizons of 20 and 100 tokens
FORGET_HEADS = 4  # the `tiny` model's heads: its α's run from the first head's to the last head's
RESULTS_FILE, TABLE_FILE = "capacity.json", "capacity.md"


def recall_accuracy(spec: MemorySpec, n_pairs: int, eta: float, **protocol) -> float:
    """Fraction of N written pairs that one memory head recalls (module docstring). eta: the writes' inner step;
    protocol: `recall_reads`' keyword arguments (head_dim, chunk_size, alpha, trials, seed)."""
    reads, values, order = recall_reads(spec, n_pairs, eta, **protocol)
    cos = F.normalize(reads, dim=-1) @ F.normalize(values, dim=-1).transpose(1, 2)  # [B, query, stored]
    return (cos.argmax(-1) == order).float().mean().item()


def recall_reads(
    spec: MemorySpec,
    n_pairs: int,
    eta: float,
    *,
    head_dim: int = 64,
    chunk_size: int = 64,
    alpha: float | None = None,
    trials: int = 8,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The protocol's tensors: the reads o [trials, N, D] of the query tokens (query j asks for pair order[:, j]),
    the stored values [trials, N, D] and order [trials, N]."""
    if n_pairs < 1 or trials < 1:
        raise ValueError(f"n_pairs and trials must be >= 1, got {n_pairs} and {trials}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    B, N, D = trials, n_pairs, head_dim
    g = torch.Generator().manual_seed(seed)
    keys = F.normalize(torch.randn(B, N, D, generator=g), dim=-1)
    values = torch.randn(B, N, D, generator=g)
    if spec.mlp and spec.mlp_norm == "layernorm":
        values = F.rms_norm(values, (D,))
    order = torch.argsort(torch.rand(B, N, generator=g), dim=-1)  # π, one per trial
    asked = torch.gather(keys, 1, order[..., None].expand(-1, -1, D))

    k = torch.cat([keys, asked], 1)[:, :, None]  # [B, 2N, 1, D]
    v = torch.cat([values, torch.zeros_like(values)], 1)[:, :, None]
    ones = torch.ones(B, 2 * N, 1)
    writing = torch.arange(2 * N) < N  # [2N]
    eta_t = torch.where(writing, eta, eta * QUERY_ETA)[None, :, None].expand(B, -1, 1).contiguous()
    alpha_t = None
    if spec.retention != "none":
        a = 1.0 if alpha is None else alpha
        alpha_t = torch.where(writing, a, 1.0)[None, :, None].expand(B, -1, 1).contiguous()
    theta_t = THETA * ones if spec.algorithm == "momentum" else None
    delta_t = DELTA * ones if spec.bias == "huber" else None
    state = init_state(spec, B, 1, D, D, generator=g)

    o, _ = chunk_miras(
        k, k, v, eta_t, alpha_t, spec=spec, chunk_size=chunk_size, momentum=theta_t, delta=delta_t, initial_state=state
    )
    return o[:, N:, 0], values, order


def layer_alphas(name: str) -> tuple[float, float]:
    """The first and last head's initial α of a FORGET_HEADS-head layer of preset `name`."""
    gate = PRESET_GATES.get(name, {}).get("alpha_gate", "data_dependent")
    a = alpha_init(gate, FORGET_HEADS)
    return a[0], a[-1]


def capacity(accuracies: dict[int, float]) -> int:
    """The largest N recalled with accuracy >= CAPACITY_LEVEL (0 if none)."""
    return max((n for n, acc in accuracies.items() if acc >= CAPACITY_LEVEL), default=0)


def sweep(
    names: Sequence[str],
    *,
    head_dim: int = 64,
    trials: int = 8,
    seed: int = 0,
    chunks: Sequence[int] = CHUNKS,
    log=print,
) -> dict:
    """Every preset of `names` over N_PAIRS × ETA_SCALES × chunks (α = 1), and at its layer's initial α's for
    N = FORGET_N (η = 0.1 and 1 × η_max, chunk 64). A JSON-ready dict."""
    rows, forget = [], []
    for name in names:
        spec, top = get(name), eta_max(get(name), head_dim)
        for chunk in chunks:
            start = time.perf_counter()
            for scale in ETA_SCALES:
                acc = {
                    n: recall_accuracy(
                        spec, n, scale * top, head_dim=head_dim, chunk_size=chunk, trials=trials, seed=seed
                    )
                    for n in N_PAIRS
                }
                rows.append(
                    dict(
                        preset=name,
                        chunk=chunk,
                        eta_scale=scale,
                        eta=scale * top,
                        accuracy={str(n): a for n, a in acc.items()},
                        capacity=capacity(acc),
                    )
                )
            log(f"{name} chunk {chunk}: {time.perf_counter() - start:.1f} s")
        if spec.retention != "none":
            for a in layer_alphas(name):
                for scale in (0.1, 1.0):
                    acc = recall_accuracy(
                        spec, FORGET_N, scale * top, head_dim=head_dim, alpha=a, trials=trials, seed=seed
                    )
                    forget.append(dict(preset=name, alpha=a, eta_scale=scale, n_pairs=FORGET_N, accuracy=acc))
    settings = dict(
        head_dim=head_dim,
        trials=trials,
        seed=seed,
        n_pairs=list(N_PAIRS),
        eta_scales=list(ETA_SCALES),
        chunks=list(chunks),
        query_eta=QUERY_ETA,
        theta=THETA,
        delta=DELTA,
        capacity_level=CAPACITY_LEVEL,
        dtype="float32",
    )
    return dict(settings=settings, rows=rows, forgetting=forget)


def markdown(result: dict) -> str:
    """The sweep as markdown: a capacity summary, the full accuracy tables, the forgetting table."""
    s = result["settings"]
    chunks, scales = s["chunks"], s["eta_scales"]
    lines = [
        f"# Recall capacity of one memory head (D = {s['head_dim']}, {s['trials']} trials, seed {s['seed']})",
        "",
        f"Capacity: the largest N of {s['n_pairs']} recalled with accuracy >= {s['capacity_level']} "
        f"(unrounded; α = 1), per η (in units of the layer's η_max) and chunk size "
        f"({' / '.join(map(str, chunks))}).",
        "",
        "| preset | η_max | " + " | ".join(f"{x}·η_max" for x in scales) + " |",
        "|---|---|" + "---|" * len(scales),
    ]
    by = {(r["preset"], r["chunk"], r["eta_scale"]): r for r in result["rows"]}
    names = list(dict.fromkeys(r["preset"] for r in result["rows"]))
    for name in names:
        cells = [" / ".join(str(by[name, c, x]["capacity"]) for c in chunks if (name, c, x) in by) for x in scales]
        top = by[name, chunks[0], scales[0]]["eta"] / scales[0]
        lines.append(f"| {name} | {top:.4g} | " + " | ".join(cells) + " |")
    for chunk in chunks:
        lines += [
            "",
            f"## Accuracy (%), chunk {chunk}, α = 1",
            "",
            "| preset | η/η_max | " + " | ".join(f"N={n}" for n in s["n_pairs"]) + " |",
            "|---|---|" + "---|" * len(s["n_pairs"]),
        ]
        for r in result["rows"]:
            if r["chunk"] == chunk:
                accs = " | ".join(f"{100 * r['accuracy'][str(n)]:.0f}" for n in s["n_pairs"])
                lines.append(f"| {r['preset']} | {r['eta_scale']} | {accs} |")
    if result["forgetting"]:
        lines += [
            "",
            f"## Accuracy (%) at the layer's initial α (first / last head of {FORGET_HEADS}), "
            f"N = {FORGET_N}, chunk {chunks[0]}",
            "",
            "| preset | α | η = 0.1·η_max | η = η_max |",
            "|---|---|---|---|",
        ]
        f = {(r["preset"], r["alpha"], r["eta_scale"]): r["accuracy"] for r in result["forgetting"]}
        for name, a in dict.fromkeys((r["preset"], r["alpha"]) for r in result["forgetting"]):
            lines.append(f"| {name} | {a:.4g} | {100 * f[name, a, 0.1]:.0f} | {100 * f[name, a, 1.0]:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miras.eval.capacity", description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunks", type=int, nargs="+", default=list(CHUNKS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared machine)")
    parser.add_argument("--out", type=Path, default=Path("runs/capacity"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    result = sweep(
        args.presets,
        head_dim=args.head_dim,
        trials=args.trials,
        seed=args.seed,
        chunks=args.chunks,
        log=lambda line: print(line, file=sys.stderr),
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / RESULTS_FILE, json.dumps(result, indent=1) + "\n")
    write_text_atomic(args.out / TABLE_FILE, text)
    print(text)
    print(f"{result['seconds']} s; wrote {args.out / RESULTS_FILE} and {args.out / TABLE_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
