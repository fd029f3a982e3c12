"""What each Miras layer of a model writes into its memory, measured on inputs: per layer, medians over the batch's
tokens and heads of the write's error ‖e‖ = ‖M₀(k) − v‖ at the layer's initial memory M₀, the value's norm, η_t,
and for the Huber bias its threshold δ_t, the fraction of tokens outside the δ-ball and the write's norm against the
l2 write, ‖u‖ / ‖e‖ (u = ∂ℓ/∂M(k), the spec's upstream gradient; 1 for l2).

Why the initial memory: with per-chunk gradients every token of a chunk takes its gradient at the chunk's anchor,
which for the first chunk is M₀; for sequences no longer than the chunk (MQAR at 32 tokens, chunk 64) that is every
token, so the numbers are the writes exactly. For later chunks they describe the first write of each key only.

    python -m miras.eval.memory_probe RUN [RUN ...] [--init] [--examples 256]

RUN: a finished MQAR run folder (`miras recall mqar` or `miras train --data mqar`); the probe draws fresh MQAR test
sequences of its setting. --init probes the run's initial weights (a model of its config seeded as the trainer
seeds it) instead of its trained ones. Issue 23's diagnosis of Yaad's Huber bias used it (miras/experiments/README.md,
section 5).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from miras.config import ModelConfig
from miras.data.synthetic import mqar_splits
from miras.layers.miras_layer import MirasLayer
from miras.memory.architecture import memory_forward
from miras.memory.bias import upstream
from miras.memory.retention import retention_map
from miras.models import MirasLM
from miras.run.checkpoint import load_model_weights
from miras.run.folder import read_config

COLUMNS = ("‖e‖", "‖v‖", "η", "δ", "outside", "‖u‖/‖e‖")


@torch.no_grad()
def probe_memory(model: MirasLM, input_ids: torch.Tensor) -> list[dict[str, float]]:
    """One dict per Miras layer, in depth order, with the COLUMNS that apply (δ, outside: Huber only)."""
    rows: list[dict[str, float]] = []

    def hook(layer: MirasLayer, args: tuple) -> None:
        x = args[0]
        _, k, v, _ = layer._qkv(x, None)  # [B, T, H, D], as the op receives them
        eta, _, _, delta = layer._gates(x)  # [B, T, H]
        spec = layer.spec
        weights = retention_map(spec, layer._initial_memory(x.shape[0]))  # non-linear retentions keep W = φ(A)
        kk, vv = k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        e = memory_forward(spec, weights, kk) - vv
        norm = e.norm(dim=-1)
        d = None if delta is None else delta.transpose(1, 2)  # [B, H, T]
        u = upstream(spec, e, torch.zeros_like(e), d)
        row = {"‖e‖": norm.median().item(), "‖v‖": vv.norm(dim=-1).median().item(), "η": eta.median().item()}
        if d is not None:
            row["δ"] = d.median().item()
            row["outside"] = (norm > d).float().mean().item()
        row["‖u‖/‖e‖"] = (u.norm(dim=-1) / norm).median().item()
        rows.append(row)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, MirasLayer)]
    try:
        model(input_ids)
    finally:
        for h in handles:
            h.remove()
    return rows


def probe_run(run_dir: str, *, init: bool = False, examples: int = 256, seed: int = 123) -> list[dict[str, float]]:
    """`probe_memory` of an MQAR run folder's model (or, init=True, a fresh one of its config) on `examples` fresh
    test sequences of the run's setting (drawn with `seed`, not the run's)."""
    saved = read_config(run_dir)
    train = saved["train"]
    if train.get("data") != "mqar":
        raise ValueError(f"{run_dir}: not an MQAR run (data {train.get('data')!r}); the probe draws MQAR sequences")
    config = ModelConfig.from_dict(saved["model"])
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG is left as it was
        torch.manual_seed(train["seed"])  # as the trainer seeds right before the model: the run's initial weights
        model = MirasLM(config)
    if not init:
        load_model_weights(model, run_dir)
    model.eval()
    splits = mqar_splits(
        train["seq_len"], train["mqar_kv_pairs"], config.vocab_size, train_examples=1, test_examples=examples, seed=seed
    )
    return probe_memory(model, splits.test.inputs)


def format_rows(name: str, rows: Sequence[dict[str, float]]) -> list[str]:
    """Markdown table rows: the run, the layer, then every COLUMN ('—' where it does not apply)."""
    return [
        f"| {name} | {i} | " + " | ".join(f"{row[c]:.3g}" if c in row else "—" for c in COLUMNS) + " |"
        for i, row in enumerate(rows, 1)
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miras.eval.memory_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", metavar="RUN", help="finished MQAR run folders")
    parser.add_argument("--init", action="store_true", help="probe a fresh model of each run's config")
    parser.add_argument("--examples", type=int, default=256, help="test sequences (default: 256)")
    args = parser.parse_args(argv)
    lines = [
        "| run | layer | " + " | ".join(COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in COLUMNS) + " |",
    ]
    for run in args.runs:
        name = ("init " if args.init else "") + run.rstrip("/").split("/")[-1]
        try:
            lines += format_rows(name, probe_run(run, init=args.init, examples=args.examples))
        except (ValueError, FileNotFoundError) as e:  # not a run folder, not MQAR, no weights
            print(f"error: {e}", file=sys.stderr)
            return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
