"""`ablate`: the paper's ablations (Sec. 6.4, Fig. 4 and Table 4) as one `compare` each.

Studies:
- moneta-p: Moneta with p in {1, 1.5, 2, 2.8, 3, 3.2, 4} (the paper's Fig. 4 values; its default is p = 3).
- moneta-q: Moneta with q in {2, 3, 4, 5} (Fig. 4; default q = 4).
- yaad: Yaad without each of its components (Table 4, plus the ICLR version's "w/o RoPE"), as far as the design space
  expresses them; see `YAAD_VARIANTS`.

Every point is trained and scored by `miras.experiments.compare.compare` under the same budget (same steps, tokens,
seed and, by default, parameter count), so a study's folder has the same results.json / results.md / loss.png / runs/
layout and is resumable the same way. Numeric studies add ablation.png: validation perplexity against p or q.

Only valid points are run. MemorySpec requires p >= 1 (for p < 1, |e|^p is not a norm and its gradient
p·Sign(e)|e|^{p-1} is unbounded at e = 0; p in (1, 2) is kept finite by abs_eps) and q > 1 (the lq normalizer
A / ||A||_q^{q-2} needs a norm; q = 2 is plain decay, W = A). Values outside are refused with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

from miras.experiments.compare import Candidate, CompareConfig, compare
from miras.presets import moneta, yaad
from miras.train import ConfigError

STUDIES = ("moneta-p", "moneta-q", "yaad")
DEFAULT_VALUES = {"moneta-p": (1.0, 1.5, 2.0, 2.8, 3.0, 3.2, 4.0), "moneta-q": (2.0, 3.0, 4.0, 5.0)}
PLOT_FILE = "ablation.png"

# Table 4's rows that the design space can express, as (name, label, MemorySpec changes, ModelConfig changes).
# Not expressible, so left out: "input-independent δ" (the δ gate's rank is the model-wide gate_rank; setting it to 0
# would make every gate input-independent, not only δ). Yaad has no momentum and no persistent memory to remove.
YAAD_VARIANTS: tuple[tuple[str, str, dict, dict], ...] = (
    ("yaad", "Yaad (full)", {}, {}),
    ("yaad-no-retention", "w/o retention gate (α = 1)", {"retention": "none"}, {}),
    ("yaad-l2-only", "w/o ℓ1 branch (ℓ2 loss only)", {"bias": "l2"}, {}),
    # The ℓ1 branch alone: ‖e‖₁, whose gradient Sign(e) is Yaad's outer branch without its δ_t scale.
    ("yaad-l1-only", "w/o ℓ2 branch (ℓ1 loss only)", {"bias": "lp", "p": 1.0}, {}),
    ("yaad-linear", "linear memory (MLP → matrix)", {"memory": "linear"}, {}),
    ("yaad-no-rope", "w/o RoPE", {}, {"use_rope": False}),
)


def ablation_candidates(study: str, values: Sequence[float] | None = None) -> list[Candidate]:
    """The points of a study; values replaces the default p or q values (numeric studies only)."""
    if study not in STUDIES:
        raise ConfigError("study", f"{study!r} is not one of {', '.join(STUDIES)}")
    if study == "yaad":
        if values:
            raise ConfigError("values", "the yaad study has fixed variants; --values is for moneta-p and moneta-q")
        return [
            Candidate(name=name, preset="yaad", spec=yaad(**spec), overrides=overrides, label=label)
            for name, label, spec, overrides in YAAD_VARIANTS
        ]
    axis = study.removeprefix("moneta-")
    values = DEFAULT_VALUES[study] if not values else tuple(float(v) for v in values)
    if len(set(values)) != len(values):
        raise ConfigError("values", f"has duplicates: {list(values)}")
    candidates = []
    for v in values:
        if not math.isfinite(v):
            raise ConfigError("values", f"{axis} = {v} is not a finite number")
        try:
            spec = moneta(**{axis: v})
        except ValueError as e:
            rule = (
                "p >= 1: below 1 the lp bias is not a norm" if axis == "p" else "q > 1: the lq retention needs a norm"
            )
            raise ConfigError("values", f"{axis} = {v:g} is not a valid Moneta ({rule}): {e}") from None
        candidates.append(
            Candidate(name=f"moneta-{axis}{v:g}", preset="moneta", spec=spec, label=f"{axis} = {v:g}", value=v)
        )
    return candidates


def ablate(
    study: str,
    config: CompareConfig,
    out_dir: str | Path,
    values: Sequence[float] | None = None,
    *,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run a study (see the module docstring); returns compare's rows. Numeric studies also write ablation.png."""
    candidates = ablation_candidates(study, values)
    if study == "yaad":
        title, notes = (
            "Ablation: components of Yaad (paper Table 4)",
            (
                "Rows the design space cannot express are left out: an input-independent δ alone (the gate rank is shared "
                "by every gate), momentum and persistent memory (Yaad has neither)."
            ),
        )
    else:
        axis = study.removeprefix("moneta-")
        title = f"Ablation: Moneta's {axis} (paper Fig. 4)"
        notes = (
            "Valid values: p >= 1 (MemorySpec: below 1 the lp bias is not a norm)."
            if axis == "p"
            else "Valid values: q > 1 (MemorySpec: the lq normalizer needs a norm; q = 2 is plain decay)."
        )
    rows = compare(candidates, config, out_dir, title=title, notes=notes, log=log)
    if study != "yaad":
        _plot(rows, config, Path(out_dir) / PLOT_FILE, study.removeprefix("moneta-"))
    return rows


def _plot(rows: Sequence[dict], config: CompareConfig, path: Path, axis: str) -> None:
    """Validation perplexity against the studied value, one line per validation set; failed points are left out."""
    from miras.plots import _figure, _save  # the shared Agg figure and atomic PNG write; loads matplotlib

    fig, ax = _figure()
    for spec in config.val_data:
        points = sorted((row["value"], row["lm"]["ppl"][spec]["ppl"]) for row in rows if "lm" in row)
        if points:
            ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=f"{spec} (validation)")
    ax.set_xlabel(axis)
    ax.set_ylabel("perplexity")
    ax.set_title(f"Moneta: perplexity against {axis} ({config.train_tokens:,} training tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


__all__ = ["DEFAULT_VALUES", "STUDIES", "YAAD_VARIANTS", "ablate", "ablation_candidates"]
