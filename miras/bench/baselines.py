"""What the op is compared with: a hand-written chunked gated delta rule (the stand-in for fla's), fla's own
pure-PyTorch version when fla is installed, and a minimal module around the op that matches titans-pytorch's
NeuralMemory.

Layout as the op: q, k [B, T, H, K], v [B, T, H, V], gates [B, T, H].
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from miras.ops import chunk_miras, init_state
from miras.spec import MemorySpec


def gated_delta_rule_loop(q, k, v, beta, g):
    """Token loop of the gated delta rule, the reference for the chunked form:
    S_t = α_t (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ, o_t = S_tᵀ q_t, α_t = exp(g_t), S [B, H, K, V]."""
    B, T, H, K = q.shape
    S = q.new_zeros(B, H, K, v.shape[-1])
    out = []
    for t in range(T):
        kt = k[:, t]
        S = S * g[:, t].exp()[..., None, None]
        err = v[:, t] - torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + beta[:, t, :, None, None] * kt[..., :, None] * err[..., None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    return torch.stack(out, 1)


def chunk_gated_delta_rule(q, k, v, beta, g, chunk_size: int = 64):
    """The gated delta rule chunk-parallel, in the standard WY/UT form (as fla's naive_chunk_gated_delta_rule),
    written from the math. Per chunk with γ = cumsum(g) and the chunk-start state S_0, the corrected values
    U = (I + A)^{-1} (β v - β e^γ k S_0) with A[i, j] = β_i e^{γ_i - γ_j} k_i·k_j (j < i) come from one triangular
    solve for all chunks (u = T β v, w = T β e^γ k), so that only U = u - w S_0 and the state hand-off are sequential:
        o = e^γ q S_0 + (Q Kᵀ ⊙ e^{γ_i - γ_j}, j ≤ i) U,   S_n = e^{γ_n} S_0 + (e^{γ_n - γ} k)ᵀ U.
    """
    B, T, H, K = q.shape
    V, n = v.shape[-1], chunk_size
    pad = (-T) % n  # padded tokens have k = v = 0, β = 0, g = 0: they leave the state alone

    def blocks(x):
        x = x.transpose(1, 2)
        x = F.pad(x, (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
        return x.reshape(B, H, -1, n, *x.shape[3:])

    q, k, v, beta, g = (blocks(x) for x in (q, k, v, beta, g))
    gam = g.cumsum(-1)  # [B, H, N, n]
    lower = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    # Mask before exp: above the diagonal γ_i - γ_j > 0 and could overflow.
    decay = (gam[..., :, None] - gam[..., None, :]).masked_fill(~lower, float("-inf")).exp()
    k_beta = k * beta[..., None]
    strict = torch.eye(n, dtype=torch.bool, device=q.device)
    A = ((k_beta @ k.transpose(-1, -2)) * decay).masked_fill(strict, 0.0)
    eye = torch.eye(n, dtype=q.dtype, device=q.device)
    rhs = torch.cat([v * beta[..., None], k_beta * gam.exp()[..., None]], dim=-1)
    u, w = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True).split([V, K], dim=-1)
    scores = (q @ k.transpose(-1, -2)) * decay
    q_in = q * gam.exp()[..., None]  # reads S_0 decayed to each token
    k_out = k * (gam[..., -1:] - gam).exp()[..., None]  # writes decayed to the chunk's end
    S = q.new_zeros(B, H, K, V)
    outs = []
    # unbind, not x[:, :, c]: indexing would make autograd allocate a full-size zero gradient per chunk.
    for u_c, w_c, q_c, k_c, s_c, last in zip(*(x.unbind(2) for x in (u, w, q_in, k_out, scores, gam[..., -1]))):
        u_c = u_c - w_c @ S
        outs.append(q_c @ S + s_c @ u_c)
        S = S * last.exp()[..., None, None] + k_c.transpose(-1, -2) @ u_c
    return torch.stack(outs, 2).reshape(B, H, -1, V)[:, :, :T].transpose(1, 2)


def chunk_gated_delta_rule_flops(B: int, T: int, H: int, K: int, V: int, chunk_size: int) -> int:
    """Forward matmul FLOPs of `chunk_gated_delta_rule` (2mkn per matmul, n²·m per triangular solve with m columns),
    per chunk of n: k_β Kᵀ and Q Kᵀ 2·2n²K, the solve n²(K + V), scores·U 2n²V, w S_0, e^γ q S_0 and the end state
    3·2nKV. Padding is counted (it is computed)."""
    n = chunk_size
    chunks = -(-T // n)
    return B * H * chunks * (4 * n * n * K + n * n * (K + V) + 2 * n * n * V + 6 * n * K * V)


def fla_chunk_gated_delta_rule() -> tuple[Callable | None, str]:
    """fla's pure-PyTorch chunked gated delta rule (`naive_chunk_gated_delta_rule`, the reference of the gated_deltanet comparison), or None
    and why not. `import fla.ops...` imports triton's kernels, and triton is ~1 GB and has no CPU driver; the naive
    file itself needs only torch and einops, so without triton it is loaded from the installed fla package's source
    file (`pip install fla-core==0.6.0`, a small pure-Python wheel), the same code."""
    try:
        from fla.ops.gated_delta_rule.naive import naive_chunk_gated_delta_rule

        how = "fla.ops.gated_delta_rule.naive.naive_chunk_gated_delta_rule"
    except Exception as error:  # ImportError (no triton), or triton failing to find a driver
        spec = importlib.util.find_spec("fla")  # locates the package without running its __init__
        path = (
            None
            if spec is None
            else Path(next(iter(spec.submodule_search_locations or []), "")) / "ops/gated_delta_rule/naive.py"
        )
        if path is None or not path.is_file():
            return (
                None,
                f"fla not installed (`pip install fla-core==0.6.0`: import failed with {type(error).__name__}: {error})",
            )
        module_spec = importlib.util.spec_from_file_location("miras_bench_fla_gated_delta_rule_naive", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as load_error:
            return None, f"{path} did not load ({type(load_error).__name__}: {load_error})"
        naive_chunk_gated_delta_rule = module.naive_chunk_gated_delta_rule
        try:
            version = importlib.metadata.version("fla-core")
        except importlib.metadata.PackageNotFoundError:
            version = "(version unknown)"
        how = f"naive_chunk_gated_delta_rule of fla-core {version}, loaded from its file {path} (fla.ops needs triton)"

    def run(q, k, v, beta, g, chunk_size: int = 64):
        return naive_chunk_gated_delta_rule(q, k, v, g=g, beta=beta, chunk_size=chunk_size, scale=1.0)[0]

    return run, how


class OpWithProjections(nn.Module):
    """The op with what it needs to be compared with titans-pytorch's NeuralMemory on the same input x [B, T, dim]:
    q/k/v projections (q, k l2-normalized), per-head gate projections, learned initial memory weights and an output
    projection. No short conv, norms or output gate (NeuralMemory has no conv; its RMSNorms are cheap)."""

    def __init__(
        self, spec: MemorySpec, dim: int, heads: int, head_dim: int, chunk_size: int, compile_steps: bool = False
    ):
        super().__init__()
        self.spec, self.heads, self.head_dim, self.chunk_size = spec, heads, head_dim, chunk_size
        self.compile_steps = compile_steps
        self.gate_names = ["eta"] + (["alpha"] if spec.retention != "none" else [])
        self.gate_names += (["momentum"] if spec.algorithm == "momentum" else []) + (
            ["delta"] if spec.bias == "huber" else []
        )
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.gates = nn.Linear(dim, len(self.gate_names) * heads)
        self.out = nn.Linear(heads * head_dim, dim, bias=False)
        self.memory = nn.ParameterList(init_state(spec, 1, heads, head_dim, head_dim).memory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        raw = dict(zip(self.gate_names, self.gates(x).view(B, T, -1, self.heads).unbind(2)))
        # Gate ranges as in the op benchmarks: small steps, α in [0.97, 1].
        gates = {
            "eta": 0.05 * torch.sigmoid(raw["eta"]),
            "alpha": 0.97 + 0.03 * torch.sigmoid(raw["alpha"]) if "alpha" in raw else None,
            "momentum": torch.sigmoid(raw["momentum"]) if "momentum" in raw else None,
            "delta": F.softplus(raw["delta"]) if "delta" in raw else None,
        }
        o, _ = chunk_miras(
            F.normalize(q, dim=-1),
            F.normalize(k, dim=-1),
            v,
            gates["eta"],
            gates["alpha"],
            spec=self.spec,
            chunk_size=self.chunk_size,
            momentum=gates["momentum"],
            delta=gates["delta"],
            initial_state=tuple(w.expand(B, *w.shape[1:]) for w in self.memory),
            compile_steps=self.compile_steps,
        )
        return self.out(o.reshape(B, T, -1))
