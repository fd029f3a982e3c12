"""`MemorySpec`: one point of the Miras design space (memory, bias, retention, algorithm) as a frozen dataclass.

Every field is flat; invalid values and combinations raise `ValueError` at construction, naming the field and what is
allowed. The meaning of each choice, and why the paper's open points were decided as they are, is in
`miras/ops/README.md`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

MEMORIES = ("linear", "mlp")
BIASES = ("dot", "l2", "lp", "huber", "robust")
RETENTIONS = ("none", "decay", "lq", "kl", "elastic")
ALGORITHMS = ("gd", "momentum")
ACTIVATIONS = ("gelu", "silu", "relu", "tanh")
NORMS = ("layernorm", "none")
GRADIENT_AT = ("anchor", "retained")
GRADIENTS = ("per_chunk", "per_token")
LQ_MAPS = ("literal", "mirror")
INCHUNK_STEPS = ("raw", "scaled")
HUBER_FORMS = ("mixture", "norm", "coordinate")

# Retentions whose map from accumulator to weights is non-linear: the paper applies the map at chunk boundaries only
# (with a lag token, see ops/README.md).
NONLINEAR_RETENTIONS = ("lq", "kl", "elastic")


def _choice(field: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"MemorySpec.{field}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _number(field: str, value: object, *, low: float, low_open: bool = False, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(f"MemorySpec.{field}={value!r} must be a finite {'integer' if integer else 'number'}")
    if value < low or (low_open and value == low):
        raise ValueError(f"MemorySpec.{field}={value!r} must be {'>' if low_open else '>='} {low}")


@dataclass(frozen=True)
class MemorySpec:
    """The four Miras axes and their hyper-parameters.

    memory:     "linear" (M(k) = W k) or "mlp" (M(x) = x + N(W_L σ(... σ(W_1 x))), paper default depth 2).
    bias:       attentional bias, the inner loss on e = M(k) - v: "dot" (-<M(k), v>), "l2" (½‖e‖²),
                "lp" (‖e‖_p^p), "huber" (Yaad: l2 gradient if ‖e‖ ≤ δ_t else δ_t ∇‖e‖₁; huber_form),
                "robust" (½‖e‖² + Δ‖e‖).
    retention:  "none", "decay" (W ← α W), "lq" (Moneta: A ← α A, W = A/‖A‖_q^{q-2}), "kl" (Memora: W = c·softmax
                of logits A ← α A), "elastic" (W = soft-threshold of A ← α A).
    algorithm:  "gd" or "momentum" (S ← θ S - η g, W ← α W + S).
    """

    memory: str = "mlp"
    bias: str = "l2"
    retention: str = "decay"
    algorithm: str = "gd"

    # MLP memory: depth (number of weight matrices), hidden width = expansion * key_dim, activation between layers,
    # a parameter-free norm on the last layer's output, and the residual connection x + ... (needs key_dim == value_dim).
    mlp_depth: int = 2
    mlp_expansion: int = 4
    mlp_activation: str = "gelu"
    mlp_norm: str = "layernorm"
    mlp_residual: bool = True
    norm_eps: float = 1e-5

    # Bias hyper-parameters. p: the lp exponent. robust_radius: Δ, the radius of the worst-case value shift.
    p: float = 3.0
    robust_radius: float = 1.0
    # Which of the paper's three Huber forms bias="huber" uses (Sec. 3.3, Eqs. 14-16). "mixture" (Eq. 16, Yaad's):
    # u = e if ‖e‖ ≤ δ_t else δ_t Sign(e), the l2 or the l1 gradient per token; the write's norm jumps from δ to
    # δ√V at the threshold. "norm" (Eq. 15): u = e · min(1, δ_t/‖e‖), e clipped to norm δ_t (continuous).
    # "coordinate" (Eq. 14): each coordinate of e clipped to [-δ_t, δ_t] (continuous).
    huber_form: str = "mixture"

    # Retention hyper-parameters.
    q: float = 4.0  # lq: the normalizer's exponent
    lq_map: str = "literal"  # "literal": W = A / n^{q-2} (Eq. 24); "mirror": W = Sign(A)|A|^{q-1} / n^{q-2}
    lq_floor: float = 1.0  # n = max(‖A‖_q, lq_floor) for "literal": a small accumulator is not blown up
    kl_scale: float = 0.0  # c in W = c·softmax(A) (softmax over each row's inputs); 0 means sqrt(fan_in)
    elastic_threshold: float = 1e-3  # γ in W = S_γ(A)

    # Smoothing of Sign and |.|: Sign(x) ≈ tanh(s x) (s = 0: exact sign); |x|^r ≈ (x² + ε)^{r/2}.
    sign_sharpness: float = 0.0
    abs_eps: float = 1e-6

    # Where the per-token gradient is taken: "anchor" (the chunk-start state W'; Titans: measure, then retain) or
    # "retained" (the anchor decayed by the retention so far, α_t W_{t-1} at chunk size 1; Mamba2 / Gated DeltaNet).
    gradient_at: str = "anchor"

    # Which state each token's inner gradient is taken at, i.e. what chunk_size means. "per_chunk": at the chunk's
    # anchor (mini-batch GD inside a chunk, the TTT / Titans / Miras-paper parallel scheme; chunk_size is a
    # semantic hyper-parameter). "per_token": at the state the previous token left (online GD, the exact
    # recurrence at every chunk size; chunk_size is only a speed knob). per_token has an exact chunk-parallel form
    # (the WY / UT transform of DeltaNet) only for the delta-rule family: memory linear, bias l2 or dot, retention
    # none or decay, algorithm gd. Any other spec is per-token at chunk_size=1 (ops/README.md section 1).
    gradients: str = "per_chunk"

    # Non-linear retentions with per-chunk gradients: how the read weights move inside a chunk after its lag token
    # (ops/README.md section 1). "raw": by the accumulator's increments, W_t = α_t W_{t-1} - η_t g_t (the paper's
    # parallel scheme, literally). "scaled": by those increments times φ's slope at the lag token, s = tr J_φ(A_s) / N
    # per weight matrix (Moneta: 1/n_s^{q-2}; Memora: the softmax's, on row-centered steps), a first-order step
    # through φ that keeps the fast path (one scalar per matrix). At chunk size 1 both are the per-token rule.
    inchunk_steps: str = "raw"

    def __post_init__(self) -> None:
        _choice("memory", self.memory, MEMORIES)
        _choice("bias", self.bias, BIASES)
        _choice("retention", self.retention, RETENTIONS)
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _choice("mlp_activation", self.mlp_activation, ACTIVATIONS)
        _choice("mlp_norm", self.mlp_norm, NORMS)
        _choice("gradient_at", self.gradient_at, GRADIENT_AT)
        _choice("lq_map", self.lq_map, LQ_MAPS)
        _choice("gradients", self.gradients, GRADIENTS)
        _choice("inchunk_steps", self.inchunk_steps, INCHUNK_STEPS)
        _choice("huber_form", self.huber_form, HUBER_FORMS)
        if not isinstance(self.mlp_residual, bool):
            raise ValueError(f"MemorySpec.mlp_residual={self.mlp_residual!r} must be True or False")
        _number("mlp_depth", self.mlp_depth, low=1, integer=True)
        _number("mlp_expansion", self.mlp_expansion, low=1, integer=True)
        _number("norm_eps", self.norm_eps, low=0, low_open=True)
        _number("p", self.p, low=1)
        _number("robust_radius", self.robust_radius, low=0)
        _number("q", self.q, low=1, low_open=True)
        _number("lq_floor", self.lq_floor, low=0, low_open=True)
        _number("kl_scale", self.kl_scale, low=0)
        _number("elastic_threshold", self.elastic_threshold, low=0)
        _number("sign_sharpness", self.sign_sharpness, low=0)
        _number("abs_eps", self.abs_eps, low=0)
        if self.gradient_at == "retained" and self.retention not in ("none", "decay"):
            raise ValueError(
                f"MemorySpec.gradient_at='retained' needs retention 'none' or 'decay' (got retention={self.retention!r}): "
                "the retained state is only defined for multiplicative decay"
            )
        if self.huber_form != "mixture" and self.bias != "huber":
            raise ValueError(
                f"MemorySpec.huber_form={self.huber_form!r} needs bias='huber' (got bias={self.bias!r}): leave it "
                "'mixture' (the default) for other biases"
            )
        if self.inchunk_steps == "scaled" and not self.nonlinear_retention:
            raise ValueError(
                f"MemorySpec.inchunk_steps='scaled' needs a non-linear retention ('lq', 'kl' or 'elastic'; got "
                f"retention={self.retention!r}, whose in-chunk steps are exact): use inchunk_steps='raw'"
            )
        if self.gradients == "per_token" and (reason := self._no_exact_parallel_form()):
            raise ValueError(
                f"MemorySpec.gradients='per_token' has no exact chunk-parallel form with {reason}; it is supported for "
                "memory='linear', bias 'l2' or 'dot', retention 'none' or 'decay', algorithm 'gd' (the delta-rule "
                "family). Use gradients='per_chunk' (mini-batch GD inside a chunk), with chunk_size=1 for the "
                "per-token rule"
            )
        if self.abs_eps == 0 and (reason := self._unbounded_at_zero()):
            raise ValueError(
                f"MemorySpec.abs_eps=0 with {reason}: NaN outputs or gradients where it is 0; use abs_eps > 0"
            )

    def _no_exact_parallel_form(self) -> str | None:
        """Which choice of the spec rules out an exact chunk-parallel per-token form, as words; None when it has one."""
        for field, value, allowed in (
            ("memory", self.memory, ("linear",)),
            ("bias", self.bias, ("l2", "dot")),
            ("retention", self.retention, ("none", "decay")),
            ("algorithm", self.algorithm, ("gd",)),
        ):
            if value not in allowed:
                return f"{field}={value!r}"
        return None

    def _unbounded_at_zero(self) -> str | None:
        """Which smoothed |x|^r or ‖x‖ of the spec has an unbounded derivative (or is 0/0) at x = 0 when ε = 0,
        as words for the error; None when ε = 0 is safe. A residual e = 0 is common (zero initial memory, zero
        values), and so is an accumulator entry A = 0."""
        if self.bias == "robust":
            return "bias='robust' (e / ‖e‖)"
        if self.bias == "lp" and self.sign_sharpness == 0 and (self.p < 2 or 2 < self.p < 3):
            return f"bias='lp', p={self.p} and the exact sign (p·e·|e|^(p-2))"
        if self.bias == "lp" and self.sign_sharpness > 0 and 1 < self.p < 2:
            return f"bias='lp', p={self.p} and sign_sharpness > 0 (|e|^(p-1))"
        if self.retention == "lq" and self.lq_map == "mirror" and self.q < 2:
            return f"lq_map='mirror' and q={self.q} (|A|^(q-1))"
        return None

    @property
    def nonlinear_retention(self) -> bool:
        return self.retention in NONLINEAR_RETENTIONS

    @property
    def per_token(self) -> bool:
        """Every inner gradient is taken at the state the previous token left: chunk_size does not change the
        function."""
        return self.gradients == "per_token"

    @property
    def mlp(self) -> bool:
        return self.memory == "mlp"

    def replace(self, **changes: object) -> "MemorySpec":
        """A copy with some fields changed (validated again)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ValueError(f"MemorySpec has no field(s) {unknown}; fields are {sorted(names)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "MemorySpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"MemorySpec has no field(s) {unknown}; fields are {sorted(names)}")
        return cls(**data)
