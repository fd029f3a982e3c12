"""The fidelity table (miras/ops/README.md section 8, `miras bench --only fidelity`): no preset moves further from
its per-token rule than the table says. Each bound is the measured distance (float64, deterministic inputs) rounded
up in its third digit; a change that moves a preset closer should lower its bound here and in the README."""

from __future__ import annotations

import pytest

from miras import presets
from miras.bench.fidelity import fidelity

# preset: (distance at chunk 16, at chunk 64), relative L2, at the preset's defaults
BOUNDS = {
    "moneta": (0.665, 0.875),
    "yaad": (0.443, 0.512),
    "memora": (0.0458, 0.123),
    "linear_attention": (1e-12, 1e-12),
    "retnet": (1e-12, 1e-12),
    "mamba2": (1e-12, 1e-12),
    "deltanet": (1e-12, 1e-12),
    "gated_deltanet": (1e-12, 1e-12),
    "ttt_linear": (0.00364, 0.00752),
    "ttt_mlp": (0.00658, 0.0134),
    "titans": (0.447, 0.648),
}


def test_every_preset_has_a_bound():
    assert set(BOUNDS) == set(presets.PRESETS)


@pytest.mark.parametrize("preset", sorted(BOUNDS))
def test_distance_from_the_per_token_rule_does_not_grow(preset):
    distances = fidelity(preset)
    for chunk, bound in zip((16, 64), BOUNDS[preset]):
        assert distances[chunk] <= bound, f"{preset} at chunk {chunk}: {distances[chunk]:.4g} > {bound}"


def test_the_paper_scheme_stays_available():
    """inchunk_steps="raw" is the paper's literal parallel scheme, and measurably further from the per-token rule."""
    scaled, raw = fidelity("memora"), fidelity("memora", presets.memora(inchunk_steps="raw"))
    assert raw[16] > 10 * scaled[16]
