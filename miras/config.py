"""`ModelConfig`: one flat dataclass describing a Miras language model (or the Transformer++ baseline).

Field names follow Hugging Face (`vocab_size`, `hidden_size`, `num_hidden_layers`, ...) so that an HF config can
mirror it 1:1. The memory is chosen by `preset` (a name from `miras.presets`, or "transformer" for an all-attention
model); `spec` optionally replaces the preset's `MemorySpec`. How the layer computes η and α is set by `eta_gate` and
`alpha_gate` (layers/miras_layer.py); left None they take the preset's (PRESET_GATES), which is also how a config
saved before these fields existed loads with the gates it was trained with.
`to_dict()` always stores the resolved spec and gates, so a saved config does not depend on later changes to the
presets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from miras import presets
from miras.checks import int_problem
from miras.spec import MemorySpec

TRANSFORMER = "transformer"

# Named sizes. The paper's Table 5 gives 170m / 340m / 780m (blocks x dim x heads); it has no 1.3B row, so "1.3b"
# is a guess in the style of Gated DeltaNet's 1.3B (24 x 2048, 16 heads). vocab 32000 is the Llama-2 tokenizer the
# Titans recipe names; the SWA window is Samba's 2048. "tiny" and "small" are for CPU runs with the local 8192-token
# BPE, with a window of a quarter of their context so that hybrids still differ from full attention.
SIZES: dict[str, dict] = {
    "tiny": dict(
        vocab_size=8192,
        hidden_size=128,
        num_hidden_layers=2,
        num_heads=4,
        max_position_embeddings=256,
        attention_window=64,
    ),
    "small": dict(
        vocab_size=8192,
        hidden_size=256,
        num_hidden_layers=4,
        num_heads=4,
        max_position_embeddings=512,
        attention_window=128,
    ),
    "170m": dict(vocab_size=32000, hidden_size=768, num_hidden_layers=12, num_heads=16),
    "340m": dict(vocab_size=32000, hidden_size=1024, num_hidden_layers=24, num_heads=16),
    "780m": dict(vocab_size=32000, hidden_size=1536, num_hidden_layers=24, num_heads=16),
    "1.3b": dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=24, num_heads=16),
}


# How the layer computes η (the inner learning rate) and α (retention):
#   eta_gate:   "data_dependent": η_t = η_max·sigmoid(low-rank(x_t)) per head; "fixed": η ≡ 1 (an unscaled write v kᵀ)
#   alpha_gate: "data_dependent": α_t = sigmoid(low-rank(x_t)) per head; "constant": a learned per-head constant
#               (RetNet's multi-scale decays at init)
GATES = {"eta_gate": ("data_dependent", "fixed"), "alpha_gate": ("data_dependent", "constant")}
# The presets whose gates are not data-dependent: linear attention and RetNet write v kᵀ unscaled, and RetNet decays
# at a fixed per-head rate (retnet and mamba2 share their MemorySpec and differ only here).
PRESET_GATES: dict[str, dict[str, str]] = {
    "linear_attention": {"eta_gate": "fixed"},
    "retnet": {"eta_gate": "fixed", "alpha_gate": "constant"},
}


def _positive_int(name: str, value: object, low: int = 1) -> None:
    problem = int_problem(value, low)
    if problem:
        raise ValueError(f"ModelConfig.{name}={value!r} {problem}")


def _positive_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"ModelConfig.{name}={value!r} must be a finite number > 0")


@dataclass
class ModelConfig:
    """Llama-style language model whose token mixers are Miras memories (paper Sec. 5.4 and 6).

    preset:                  a `miras.presets` name (moneta, yaad, memora, ...) or "transformer" (Transformer++).
    spec:                    a MemorySpec that replaces the preset's (None: the preset's own).
    eta_gate, alpha_gate:    how η and α are computed (GATES above); None: the preset's (PRESET_GATES, else
                             "data_dependent"). None for the transformer, which has no memory.
    head_dim:                per-head key = value dim; None means hidden_size // num_heads.
    intermediate_size:       SwiGLU hidden width; None means 8/3 hidden_size rounded up to a multiple of 64.
    chunk_size:              tokens per chunk of the memory op: a semantic hyper-parameter when the spec takes
                             per-chunk gradients (gradients inside a chunk are taken at the chunk's anchor), only a
                             speed knob when it takes per-token ones (`MemorySpec.gradients`).
    conv_size:               kernel of the causal depthwise conv on q, k, v (1: no mixing across tokens).
    use_rope, rope_theta:    rotary embeddings on q, k, in Miras and attention layers alike.
    gate_rank:               rank r of the gate projections x -> R^r -> R^H.
    eta_init:                η's initial value as a fraction of η_max, the top of the data-dependent η gate's
                             range (0, η_max) (layers/miras_layer.py); in (0, 1).
    delta_init:              Huber's threshold δ_t at initialization (bias="huber", Yaad; a softplus gate), > 0;
                             None means 2·√head_dim (16 at head dim 64), derived by the layer, so that a config
                             copied to another head dim (dataclasses.replace) keeps the rule. A write's error
                             ‖M(k) − v‖ starts near √(2·head_dim) (unit-RMS values and memory outputs), so the
                             default puts every token inside the δ-ball, on Huber's l2 side, and δ_t learns where
                             the outliers begin; at 1.0 (the default before issue 23) every token starts outside
                             it, an l1 memory, and Yaad learns no recall (miras/experiments/README.md, "Recall",
                             section 5).
    hybrid_attention_every:  0: no attention; N: every N-th block (the N-th, 2N-th, ...) is sliding-window attention
                             (the paper's "-H" hybrids, Samba-style ordering).
    attention_window:        keys each sliding-window query sees, itself included.
    max_position_embeddings: the context the model is trained for (the trainer's default sequence length); RoPE has
                             no hard limit.
    """

    preset: str = "moneta"
    spec: MemorySpec | None = None
    eta_gate: str | None = None
    alpha_gate: str | None = None
    vocab_size: int = 8192
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_heads: int = 4
    head_dim: int | None = None
    intermediate_size: int | None = None
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    chunk_size: int = 64
    conv_size: int = 4
    use_rope: bool = True
    rope_theta: float = 10000.0
    gate_rank: int = 32
    eta_init: float = 0.1
    delta_init: float | None = None
    hybrid_attention_every: int = 0
    attention_window: int = 2048
    max_position_embeddings: int = 4096

    def __post_init__(self) -> None:
        names = (TRANSFORMER, *presets.PRESETS)
        if self.preset not in names:
            raise ValueError(f"ModelConfig.preset={self.preset!r} is not allowed; choose one of {', '.join(names)}")
        if isinstance(self.spec, dict):
            self.spec = MemorySpec.from_dict(self.spec)
        if self.spec is not None and not isinstance(self.spec, MemorySpec):
            raise ValueError(f"ModelConfig.spec must be a MemorySpec, a dict of its fields or None, got {self.spec!r}")
        if self.spec is not None and self.preset == TRANSFORMER:
            raise ValueError("ModelConfig.spec must be None when preset='transformer' (it has no memory layers)")
        for name, allowed in GATES.items():
            value = getattr(self, name)
            if self.preset == TRANSFORMER:
                if value is not None:
                    raise ValueError(
                        f"ModelConfig.{name} must be None when preset='transformer' (it has no memory layers)"
                    )
                continue
            if value is None:
                setattr(self, name, PRESET_GATES.get(self.preset, {}).get(name, allowed[0]))
            elif value not in allowed:
                raise ValueError(f"ModelConfig.{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_heads",
            "chunk_size",
            "conv_size",
            "gate_rank",
            "attention_window",
            "max_position_embeddings",
        ):
            _positive_int(name, getattr(self, name))
        _positive_int("hybrid_attention_every", self.hybrid_attention_every, low=0)
        for name in ("norm_eps", "initializer_range", "rope_theta"):
            _positive_float(name, getattr(self, name))
        if not (
            isinstance(self.eta_init, (int, float)) and not isinstance(self.eta_init, bool) and 0 < self.eta_init < 1
        ):
            raise ValueError(f"ModelConfig.eta_init={self.eta_init!r} must be a number in (0, 1) (a fraction of η_max)")
        for name in ("tie_word_embeddings", "use_rope"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r} must be True or False")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"ModelConfig.head_dim is None but hidden_size={self.hidden_size} is not divisible by "
                    f"num_heads={self.num_heads}; set head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_heads
        _positive_int("head_dim", self.head_dim)
        if self.delta_init is not None:
            _positive_float("delta_init", self.delta_init)
        if self.use_rope and self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even when use_rope=True")
        if self.intermediate_size is None:
            self.intermediate_size = 64 * math.ceil(8 * self.hidden_size / 3 / 64)
        _positive_int("intermediate_size", self.intermediate_size)
        if self.preset == TRANSFORMER and self.hybrid_attention_every:
            raise ValueError("ModelConfig.hybrid_attention_every must be 0 when preset='transformer' (all attention)")

    @property
    def memory_spec(self) -> MemorySpec | None:
        """The MemorySpec of the Miras layers (None for the transformer)."""
        if self.preset == TRANSFORMER:
            return None
        return self.spec if self.spec is not None else presets.get(self.preset)

    def is_attention_layer(self, layer_idx: int) -> bool:
        """Whether block `layer_idx` (0-based) mixes tokens with attention rather than a Miras memory."""
        if self.preset == TRANSFORMER:
            return True
        n = self.hybrid_attention_every
        return n > 0 and (layer_idx + 1) % n == 0

    @property
    def attention_span(self) -> int | None:
        """The window of this model's attention blocks: None (every token) for the transformer, `attention_window`
        for a hybrid's sliding-window blocks. The model and `state_size` both read it, so they cannot disagree."""
        return None if self.preset == TRANSFORMER else self.attention_window

    @classmethod
    def from_size(cls, name: str, **overrides: object) -> "ModelConfig":
        """A named size ("tiny", "small", "170m", "340m", "780m", "1.3b") with field overrides."""
        key = name.lower()
        if key not in SIZES:
            raise ValueError(f"unknown size {name!r}; choose one of {', '.join(SIZES)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"ModelConfig has no field(s) {unknown}")
        return cls(**{**SIZES[key], **overrides})

    def to_dict(self) -> dict:
        """JSON-safe: plain numbers, strings and bools; the spec as its resolved fields (None for the transformer)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        spec = self.memory_spec
        data["spec"] = None if spec is None else spec.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"ModelConfig has no field(s) {unknown}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelConfig":
        return cls.from_dict(json.loads(text))
