"""How far chunking moves each preset from its per-token rule: the `fidelity` section of `miras bench`.

A preset's per-token rule is the op at chunk size 1 (every token takes its gradient at the state the previous token
left). At a larger chunk a spec with gradients="per_chunk" takes its gradients at the chunk's anchor (mini-batch GD)
and, for the non-linear retentions, moves its in-chunk weights linearly from the lag token's: a different function.
This measures the relative L2 distance ‖o_C - o_1‖ / ‖o_1‖ of the op's outputs, on the inputs and gates a freshly
initialized layer of the "tiny" model gives for fixed random hidden states, in float64 (so the exact presets read
~1e-16, not float32 rounding). tests/bench/test_fidelity.py keeps every entry from growing.
"""

from __future__ import annotations

import torch

from miras import presets
from miras.bench.ops import op_call, train_fn
from miras.bench.report import say
from miras.bench.timing import compare
from miras.config import ModelConfig
from miras.layers.miras_layer import MirasLayer
from miras.ops import chunk_miras
from miras.spec import MemorySpec

CHUNK_SIZES = (16, 64)
SEQ_LEN = 256
BATCH = 2


def layer_inputs(
    preset: str, spec: MemorySpec | None = None, seq_len: int = SEQ_LEN, batch: int = BATCH, seed: int = 0
) -> tuple[MemorySpec, dict]:
    """The op's arguments (q, k, v, gates, initial memory) from a freshly initialized tiny layer of `preset` (with
    `spec` in place of the preset's, if given) on N(0, 1) hidden states, in float64. The layer's initialization
    draws from torch's global generator: it runs inside fork_rng, so the caller's random state is untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = MirasLayer(ModelConfig.from_size("tiny", preset=preset, spec=spec), 0).double()
        x = torch.randn(batch, seq_len, layer.qkv_proj.in_features, dtype=torch.float64)
    with torch.no_grad():
        q, k, v, _ = layer._qkv(x, None)
        eta, alpha, theta, delta = layer._gates(x)
        memory = layer._initial_memory(batch)
    args = dict(q=q, k=k, v=v, eta=eta, alpha=alpha, momentum=theta, delta=delta, initial_state=memory)
    return layer.spec, args


def distance_from_per_token_rule(spec: MemorySpec, args: dict, chunk_sizes=CHUNK_SIZES) -> dict[int, float]:
    """{chunk size: ‖o_C - o_1‖ / ‖o_1‖} for the op's arguments `args` (as `layer_inputs` gives them)."""
    with torch.no_grad():
        exact, _ = chunk_miras(spec=spec, chunk_size=1, **args)
        return {
            c: float((chunk_miras(spec=spec, chunk_size=c, **args)[0] - exact).norm() / exact.norm())
            for c in chunk_sizes
        }


def fidelity(
    preset: str, spec: MemorySpec | None = None, chunk_sizes=CHUNK_SIZES, seq_len: int = SEQ_LEN
) -> dict[int, float]:
    """The distance of `preset` (or `spec` with `preset`'s layer) from its per-token rule at each chunk size."""
    spec, args = layer_inputs(preset, spec, seq_len)
    return distance_from_per_token_rule(spec, args, chunk_sizes)


def run_fidelity(settings, shape, T: int = 2048, chunk: int = 64) -> dict:
    """The section: every preset's distance from its per-token rule at chunk 16 and 64, each non-linear retention
    under both in-chunk step rules, and the scaled rule's cost: fwd+bwd of the op under each rule, side by side
    (round-robin) on the benchmark's inputs at T."""
    rows = []
    for name in presets.PRESETS:
        spec = presets.get(name)
        variants = [spec]
        if spec.nonlinear_retention:  # the other in-chunk rule too (the paper's literal scheme is "raw")
            variants.append(spec.replace(inchunk_steps="scaled" if spec.inchunk_steps == "raw" else "raw"))
        if spec.per_token and spec.bias == "l2":  # the delta rule's mini-batch variant, a different function
            variants.append(spec.replace(gradients="per_chunk"))
        for variant in variants:
            distances = fidelity(name, variant)
            rows.append(
                {
                    "preset": name,
                    "default": variant == spec,
                    "gradients": variant.gradients,
                    "inchunk_steps": variant.inchunk_steps if variant.nonlinear_retention else None,
                    **{f"chunk_{c}": d for c, d in distances.items()},
                }
            )
            say(
                f"[fidelity] {name} (gradients={variant.gradients}"
                + (f", inchunk_steps={variant.inchunk_steps}" if variant.nonlinear_retention else "")
                + "): "
                + ", ".join(f"chunk {c} {100 * d:.3g}%" for c, d in distances.items())
            )
    speed = []
    for name in ("moneta", "memora"):
        fns = {}
        for steps in ("raw", "scaled"):
            call = op_call(
                chunk_miras, presets.get(name, inchunk_steps=steps), shape, T, chunk, settings.device, settings.dtype
            )
            fns[steps] = train_fn(call.output, call.leaves)
        timings = compare(fns, device=settings.device, repeats=settings.repeats, warmup=settings.warmup)
        raw, scaled = timings["raw"].median, timings["scaled"].median
        speed.append(
            {
                "preset": name,
                "T": T,
                "chunk_size": chunk,
                "raw": timings["raw"].to_dict(),
                "scaled": timings["scaled"].to_dict(),
                "scaled_over_raw": scaled / raw,
            }
        )
        say(
            f"[fidelity] {name} fwd+bwd T={T}: raw {1e3 * raw:.1f} ms, scaled {1e3 * scaled:.1f} ms ({scaled / raw:.3f}x)"
        )
    return {
        "seq_len": SEQ_LEN,
        "batch": BATCH,
        "size": "tiny",
        "chunk_sizes": list(CHUNK_SIZES),
        "rows": rows,
        "speed": speed,
    }
