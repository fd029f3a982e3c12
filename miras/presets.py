"""Named points of the Miras design space: the paper's three new models and the known models of its Table 1.

Each preset is a function returning a `MemorySpec`; keyword arguments override fields
(`moneta(p=2.8)`). `get(name)` looks one up by name. The table in docs/presets.md maps each to its update rule.
"""

from __future__ import annotations

from typing import Callable

from miras.spec import MemorySpec


def moneta(**overrides: object) -> MemorySpec:
    """Moneta: 2-layer MLP, lp bias (p=3), lq retention (q=4), GD (paper Eq. 24), per-chunk gradients with the paper's
    lag token; in-chunk steps scaled by the lag token's 1/n^{q-2} (`inchunk_steps="raw"` is the paper's scheme
    literally)."""
    return MemorySpec(
        memory="mlp", bias="lp", p=3.0, retention="lq", q=4.0, algorithm="gd", inchunk_steps="scaled"
    ).replace(**overrides)


def yaad(**overrides: object) -> MemorySpec:
    """Yaad: 2-layer MLP, Huber bias with a data-dependent δ_t, decay retention, GD (Eq. 26)."""
    return MemorySpec(memory="mlp", bias="huber", retention="decay", algorithm="gd").replace(**overrides)


def memora(**overrides: object) -> MemorySpec:
    """Memora: 2-layer MLP, l2 bias, KL retention (softmax of logits), GD (Eq. 27), per-chunk gradients with the
    paper's lag token; in-chunk steps through the softmax's mean slope at the lag token, row-centered
    (`inchunk_steps="raw"` is the paper's scheme literally)."""
    return MemorySpec(memory="mlp", bias="l2", retention="kl", algorithm="gd", inchunk_steps="scaled").replace(
        **overrides
    )


def linear_attention(**overrides: object) -> MemorySpec:
    """Linear attention: W_t = W_{t-1} + η_t v_t k_tᵀ (dot-product bias, no retention). The dot bias's gradient does
    not depend on W, so per-token and per-chunk gradients are one function: exact at every chunk size."""
    return MemorySpec(memory="linear", bias="dot", retention="none", gradients="per_token").replace(**overrides)


def retnet(**overrides: object) -> MemorySpec:
    """RetNet: W_t = α W_{t-1} + η_t v_t k_tᵀ with a fixed per-head α (the layer makes α data-independent).
    Exact at every chunk size (dot bias)."""
    return MemorySpec(memory="linear", bias="dot", retention="decay", gradients="per_token").replace(**overrides)


def mamba2(**overrides: object) -> MemorySpec:
    """Mamba2-style gated linear attention: W_t = α_t W_{t-1} + η_t v_t k_tᵀ (data-dependent scalar α_t). Exact at
    every chunk size (dot bias)."""
    return MemorySpec(memory="linear", bias="dot", retention="decay", gradients="per_token").replace(**overrides)


def deltanet(**overrides: object) -> MemorySpec:
    """DeltaNet: W_t = W_{t-1} - η_t (W_{t-1} k_t - v_t) k_tᵀ, token by token at every chunk size (the WY / UT
    transform; `gradients="per_chunk"` is the cheaper mini-batch variant, a different function)."""
    return MemorySpec(memory="linear", bias="l2", retention="none", gradients="per_token").replace(**overrides)


def gated_deltanet(**overrides: object) -> MemorySpec:
    """Gated DeltaNet: W_t = α_t W_{t-1} (I - η_t k_t k_tᵀ) + η_t v_t k_tᵀ: the gradient is taken at the retained
    state α_t W_{t-1}, token by token at every chunk size (the WY / UT transform; `gradients="per_chunk"` is the
    cheaper mini-batch variant, a different function)."""
    return MemorySpec(
        memory="linear", bias="l2", retention="decay", gradient_at="retained", gradients="per_token"
    ).replace(**overrides)


def ttt_linear(**overrides: object) -> MemorySpec:
    """TTT-Linear: f(x) = x + LN(W x), l2 bias, no retention, mini-batch GD (per-chunk gradients; chunk 16 in the TTT
    paper)."""
    return MemorySpec(
        memory="mlp", mlp_depth=1, mlp_residual=True, mlp_norm="layernorm", bias="l2", retention="none"
    ).replace(**overrides)


def ttt_mlp(**overrides: object) -> MemorySpec:
    """TTT-MLP: f(x) = x + LN(W_2 GELU(W_1 x)), l2 bias, no retention, mini-batch GD (per-chunk gradients)."""
    return MemorySpec(memory="mlp", mlp_depth=2, bias="l2", retention="none").replace(**overrides)


def titans(**overrides: object) -> MemorySpec:
    """Titans (LMM): 2-layer MLP, l2 bias, decay, GD with momentum: S_t = θ_t S - η_t g, W_t = α_t W + S_t, with
    per-chunk gradients (the Titans paper's mini-batch parallelization)."""
    return MemorySpec(memory="mlp", bias="l2", retention="decay", algorithm="momentum").replace(**overrides)


PRESETS: dict[str, Callable[..., MemorySpec]] = {
    "moneta": moneta,
    "yaad": yaad,
    "memora": memora,
    "linear_attention": linear_attention,
    "retnet": retnet,
    "mamba2": mamba2,
    "deltanet": deltanet,
    "gated_deltanet": gated_deltanet,
    "ttt_linear": ttt_linear,
    "ttt_mlp": ttt_mlp,
    "titans": titans,
}


def get(name: str, **overrides: object) -> MemorySpec:
    """The preset called `name` (case-insensitive, '-' or '_'), with field overrides."""
    key = name.lower().replace("-", "_")
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[key](**overrides)
