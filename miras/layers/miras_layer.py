"""MirasLayer: the paper's layer block (Sec. 5.4, Fig. 2) around the memory op.

    q, k, v = SiLU(conv(x W_qkv))        causal depthwise conv, kernel conv_size
    q, k ← l2-normalize, RoPE;  v ← RMS-normalize (memories with a LayerNorm output only, see below)
    η, α, θ, δ = gates(x)                 low-rank, per head
    y = chunk_miras(q, k, v, gates)       the memory op, [B, T, H, D]
    out = W_o(RMSNorm(y) ⊙ SiLU(x W_g))   per-head RMSNorm; GDN-style output gate

Decisions the paper (arXiv 2504.13173, Sec. 5.4) leaves open, and why:
- Heads: one memory per head with key = value dim = head_dim; gates are per-head scalars (as TTT/Titans), so they
  scale whole weight gradients and never need a rule for multiplying a channel-wise rate into an MLP's matrices.
- Gates: RWKV-7 style g = squash(b + W_up tanh(W_down x)) with rank `gate_rank`, W_up = 0 at init.
  η = η_max·sigmoid (bounded, so the inner step can never exceed η_max), α, θ = sigmoid, δ = softplus.
- η_max is the step that would fully correct the error on one unit-norm key at initialization: 1 for a linear
  memory; 1/fan_in of the last memory weight for an MLP whose output passes a parameter-free LayerNorm (the LN
  amplifies the last layer's update by ≈ fan_in, the reason TTT divides its rate by head_dim); and a further 1/p
  for the lp bias, whose gradient p·Sign(e)|e|^{p-1} is p times the l2 one at |e| ≈ 1. η starts at 0.1 η_max
  by default (`ModelConfig.eta_init`; 0.1 for l2 on a linear memory: each write removes 10% of that key's error).
- α starts per head with memory horizons 1/(1-α) log-spaced from 20 to 100 tokens (α ≈ 0.95 .. 0.99); θ starts at
  0.5; δ starts at 1, the per-coordinate RMS of the residual of an MLP memory with LayerNorm, so that the l1
  branch's step δ·Sign(e) has the size of the l2 branch's.
- ModelConfig.eta_gate = "fixed" (presets linear_attention and retnet): η is fixed to 1 (their write is v kᵀ,
  unscaled); alpha_gate = "constant" (retnet): α is a learned per-head constant initialized to RetNet's
  1 - 2^(-5-h). All other presets use data-dependent gates.
- The initial memory weights are learned per head (as Titans / TTT), from `init_weights`.
- Values are RMS-normalized (norm √D) when the memory's output passes the parameter-free LayerNorm: such a memory
  can only output vectors of norm ≈ √D (unit key + LN output), so any other value length is an error it can never
  remove, and at the model's init scale (v entries ≈ 0.07) that error swamps the inner gradient. Measured at init
  (D = 32, 8 pairs written 8 times at the initial η): cos(M(k_i), v_i) is 0.10 / 0.05 / 0.05 (moneta / ttt_mlp /
  yaad) with such small values and 0.84 / 0.71 / 0.46 with unit-RMS values. Linear memories are scale-free and keep
  v as is.

Axis legend: B batch, T time, H heads, D head dim.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from miras.config import ModelConfig
from miras.layers.conv import ShortConvolution
from miras.layers.rope import RotaryEmbedding
from miras.layers.weight_decay import no_weight_decay
from miras.memory.architecture import init_weights, weight_shapes
from miras.ops import MirasState, chunk_miras, naive_recurrent_miras, recurrent_step
from miras.ops.precision import compute_dtype
from miras.ops.state import resolve_state
from miras.spec import MemorySpec

MODES = ("chunk", "recurrent")


@functools.cache
def compiled_steps_op() -> Callable:
    """The op with its chunk steps compiled, kept out of an enclosing torch.compile graph: compiling the op itself
    would unroll its chunk loop (compile time growing with T, minutes at T=4096), while its steps (runs of 8 chunks)
    compile once for any T. Built once, when a layer first turns compile_steps on (torch.compiler.disable imports
    dynamo: a second), and kept on the layer: called in forward, dynamo would trace this cached factory and warn
    that it ignores the cache."""
    return torch.compiler.disable(functools.partial(chunk_miras, compile_steps=True))


def use_compiled_steps(module: nn.Module) -> None:
    """Every MirasLayer in `module` runs its op with compiled chunk steps, outside any enclosing torch.compile graph
    (what `miras train --compile` does before compiling the model)."""
    for layer in module.modules():
        if isinstance(layer, MirasLayer):
            layer.compile_steps = True


@dataclass(frozen=True)
class MirasLayerCache:
    """What a MirasLayer carries between calls. state: the memory op's state (it finishes an unfinished chunk
    exactly); conv: the last conv_size - 1 projected q|k|v inputs [B, 3·H·D, conv_size - 1]; position: tokens seen so
    far (RoPE's offset)."""

    state: MirasState
    conv: torch.Tensor
    position: int = 0

    def detach(self) -> "MirasLayerCache":
        """Cut from the autograd graph (truncated backpropagation through time)."""
        return MirasLayerCache(self.state.detach(), self.conv.detach(), self.position)


class Gate(nn.Module):
    """Per-head gate [B, T, H] = squash(bias + W_up tanh(W_down x)); rank 0 makes it data-independent."""

    def __init__(self, hidden: int, heads: int, rank: int, squash: str, init: list[float], scale: float = 1.0):
        super().__init__()
        if squash not in ("sigmoid", "softplus"):
            raise ValueError(f"squash must be 'sigmoid' or 'softplus', got {squash!r}")
        self.squash, self.scale, self.init_values = squash, scale, init
        self.down = nn.Linear(hidden, rank, bias=False) if rank else None
        self.up = nn.Linear(rank, heads, bias=False) if rank else None
        self.bias = nn.Parameter(torch.empty(heads))
        # No weight decay on any of it: the bias sets the gate's initial value (decay would pull every gate to
        # squash(0)), and the low-rank map starts at zero by design.
        no_weight_decay(*self.parameters())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # W_up = 0 (LoRA-style): every gate starts exactly at its designed value and becomes data-dependent as W_up
        # learns (its gradient, tanh(W_down x), is non-zero from the first step).
        if self.up is not None:
            nn.init.zeros_(self.up.weight)
        y = torch.tensor(self.init_values, dtype=torch.float64)
        if self.squash == "sigmoid":
            z = torch.logit(y / self.scale)
        else:  # softplus⁻¹(y) = y + log(1 - e^{-y})
            z = y + torch.log(-torch.expm1(-y))
        with torch.no_grad():
            self.bias.copy_(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, hidden] -> [B, T, H] in float32 (float64 for float64 x), strictly inside the gate's range.

        The squash runs in float32 even for bfloat16 x: bfloat16 cannot tell α = 0.99 from 0.992 (horizons 100
        and 128 tokens)."""
        dt = compute_dtype(x)
        z = self.bias.to(dt)
        z = z.expand(*x.shape[:-1], -1) if self.down is None else z + self.up(torch.tanh(self.down(x))).to(dt)
        g = self.scale * torch.sigmoid(z) if self.squash == "sigmoid" else F.softplus(z)
        # both underflow to 0 for z below about -100 in float32, and the op needs η, δ > 0
        return g.clamp_min(torch.finfo(dt).tiny)


def eta_max(spec: MemorySpec, head_dim: int) -> float:
    """The inner step that fully corrects one unit-norm key's error at initialization (module docstring)."""
    if spec.bias == "dot":  # no error to correct: η is a write strength
        return 1.0
    gain = 1.0
    if spec.mlp and spec.mlp_norm == "layernorm":
        gain = weight_shapes(spec, head_dim, head_dim)[-1][1]
    if spec.bias == "lp":
        gain *= spec.p
    return 1.0 / gain


def alpha_init(alpha_gate: str, heads: int) -> list[float]:
    """α's initial value per head, for ModelConfig.alpha_gate "constant" or "data_dependent"."""
    if alpha_gate == "constant":  # RetNet's multi-scale decays
        return [1.0 - 2.0 ** (-5 - h) for h in range(heads)]
    horizons = [20.0 * 5.0 ** (h / max(heads - 1, 1)) for h in range(heads)]  # 20 .. 100 tokens
    return [1.0 - 1.0 / n for n in horizons]


class MirasLayer(nn.Module):
    """A Miras token mixer. mode "chunk" runs `chunk_miras`, "recurrent" the token loop `naive_recurrent_miras`
    (the same function, slower); `step` decodes one token with `recurrent_step`."""

    def __init__(self, config: ModelConfig, layer_idx: int, mode: str = "chunk") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MirasLayer mode={mode!r} is not allowed; choose one of {', '.join(MODES)}")
        spec = config.memory_spec
        if spec is None:
            raise ValueError(f"MirasLayer needs a memory preset; ModelConfig.preset={config.preset!r} has none")
        self.spec, self.mode, self.layer_idx = spec, mode, layer_idx
        self.compile_steps = False
        self.chunk_size = config.chunk_size
        H, D, hidden = config.num_heads, config.head_dim, config.hidden_size
        self.num_heads, self.head_dim = H, D
        self.qkv_proj = nn.Linear(hidden, 3 * H * D, bias=False)
        self.qkv_conv = ShortConvolution(3 * H * D, config.conv_size)  # depthwise: q, k and v never mix
        self.rope = RotaryEmbedding(D, config.rope_theta) if config.use_rope else None
        self.normalize_values = spec.mlp and spec.mlp_norm == "layernorm"
        self.norm_eps = config.norm_eps

        rank = config.gate_rank
        self.eta_gate = None
        if config.eta_gate == "data_dependent":
            top = eta_max(spec, D)
            self.eta_gate = Gate(hidden, H, rank, "sigmoid", [config.eta_init * top] * H, scale=top)
        self.alpha_gate = None
        if spec.retention != "none":
            alpha_rank = 0 if config.alpha_gate == "constant" else rank
            self.alpha_gate = Gate(hidden, H, alpha_rank, "sigmoid", alpha_init(config.alpha_gate, H))
        self.theta_gate = Gate(hidden, H, rank, "sigmoid", [0.5] * H) if spec.algorithm == "momentum" else None
        self.delta_gate = None
        if spec.bias == "huber":  # δ starts above the initial error's norm, about √(2·D) (ModelConfig.delta_init)
            delta = config.delta_init if config.delta_init is not None else 2.0 * math.sqrt(D)
            self.delta_gate = Gate(hidden, H, rank, "softplus", [delta] * H)

        shapes = weight_shapes(spec, D, D)  # raises for an impossible memory (e.g. residual with K != V)
        self.memory_init = nn.ParameterList([nn.Parameter(torch.empty(H, o, i)) for o, i in shapes])
        self.o_norm = nn.RMSNorm(D, eps=config.norm_eps)
        no_weight_decay(*self.memory_init, self.o_norm.weight)  # the initial memory is a state, not a map
        self.g_proj = nn.Linear(hidden, H * D, bias=False)
        self.o_proj = nn.Linear(H * D, hidden, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The learned initial memory (the projections, gates and norms initialize themselves)."""
        weights = init_weights(self.spec, 1, self.num_heads, self.head_dim, self.head_dim)
        with torch.no_grad():
            for p, w in zip(self.memory_init, weights):
                p.copy_(w[0])

    @property
    def residual_projections(self) -> list[nn.Linear]:
        """Projections that write into the residual stream (their init is scaled down with depth)."""
        return [self.o_proj]

    @property
    def compile_steps(self) -> bool:
        """chunk mode: run the op with compiled chunk steps (chunk_miras(compile_steps=True)), outside any enclosing
        torch.compile graph; the trainer's --compile sets it (`use_compiled_steps`). Execution only: not part of the
        config."""
        return self._compiled_op is not None

    @compile_steps.setter
    def compile_steps(self, on: bool) -> None:
        self._compiled_op = compiled_steps_op() if on else None

    def allocate_cache(self, batch_size: int) -> MirasLayerCache:
        """The cache before the first token: the learned initial memory and an all-zero conv history."""
        p = self.memory_init[0]
        state = resolve_state(
            self.spec,
            self._initial_memory(batch_size),
            batch_size,
            self.num_heads,
            self.head_dim,
            self.head_dim,
            compute_dtype(p),
            p.device,
            self.chunk_size,
        )
        conv = p.new_zeros(batch_size, self.qkv_conv.channels, self.qkv_conv.kernel_size - 1)
        return MirasLayerCache(state, conv)

    def _initial_memory(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The learned initial memory weights, each [B, H, out, in] (a view: gradients reach the parameters)."""
        return tuple(w.unsqueeze(0).expand(batch_size, -1, -1, -1) for w in self.memory_init)

    def _qkv(self, x: torch.Tensor, cache: MirasLayerCache | None):
        """x [B, T, hidden] -> q, k [B, T, H, D] (unit norm, rotated), v [B, T, H, D], the new conv state."""
        B, T, _ = x.shape
        if cache is not None and cache.conv.shape[0] != B:
            raise ValueError(f"the cache was allocated for batch size {cache.conv.shape[0]}, the input has {B}")
        qkv, conv = self.qkv_conv(self.qkv_proj(x), None if cache is None else cache.conv)
        q, k, v = qkv.view(B, T, 3, self.num_heads, self.head_dim).unbind(2)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if self.normalize_values:
            v = F.rms_norm(v, (self.head_dim,), eps=self.norm_eps)
        if self.rope is not None:
            position = 0 if cache is None else cache.position
            q, k = self.rope(q, position), self.rope(k, position)
        return q, k, v, conv

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """η, α, θ, δ [B, T, H] in the op's compute dtype (None where the spec does not use one)."""
        if self.eta_gate is None:
            eta = torch.ones(*x.shape[:-1], self.num_heads, dtype=compute_dtype(x), device=x.device)
        else:
            eta = self.eta_gate(x)
        rest = (g if g is None else g(x) for g in (self.alpha_gate, self.theta_gate, self.delta_gate))
        return (eta, *rest)

    def _output(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """x [B, T, hidden], memory read o [B, T, H, D] -> [B, T, hidden]."""
        o = self.o_norm(o.to(x.dtype)).flatten(-2)  # [B, T, H·D]
        return self.o_proj(o * F.silu(self.g_proj(x)))

    def forward(
        self, x: torch.Tensor, cache: MirasLayerCache | None = None
    ) -> tuple[torch.Tensor, MirasLayerCache | None]:
        """x [B, T, hidden] -> (y [B, T, hidden], the cache after these tokens, or None when no cache was given)."""
        B, T, _ = x.shape
        q, k, v, conv = self._qkv(x, cache)
        eta, alpha, theta, delta = self._gates(x)
        state = self._initial_memory(B) if cache is None else cache.state
        op = chunk_miras
        if self.mode == "recurrent":
            op = naive_recurrent_miras
        elif self._compiled_op is not None:
            op = self._compiled_op
        o, state = op(
            q,
            k,
            v,
            eta,
            alpha,
            spec=self.spec,
            chunk_size=self.chunk_size,
            momentum=theta,
            delta=delta,
            initial_state=state,
            output_final_state=cache is not None,
        )  # o [B, T, H, D]
        y = self._output(x, o)
        if cache is None:
            return y, None
        return y, MirasLayerCache(state, conv, cache.position + T)

    def step(self, x: torch.Tensor, cache: MirasLayerCache) -> tuple[torch.Tensor, MirasLayerCache]:
        """One token in constant time and memory: x [B, hidden] -> (y [B, hidden], the cache after it)."""
        x = x.unsqueeze(1)  # [B, 1, hidden]
        q, k, v, conv = self._qkv(x, cache)
        dt = compute_dtype(x)
        gates = [None if g is None else g[:, 0] for g in self._gates(x)]  # [B, H], already in dt
        o, state = recurrent_step(
            self.spec, cache.state, q[:, 0].to(dt), k[:, 0].to(dt), v[:, 0].to(dt), *gates, self.chunk_size
        )  # o [B, H, D]
        y = self._output(x, o.unsqueeze(1))
        return y.squeeze(1), MirasLayerCache(state, conv, cache.position + 1)
