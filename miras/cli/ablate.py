"""`miras ablate {moneta-p,moneta-q,yaad}`: the paper's ablations (Fig. 4, Table 4) under `miras compare`'s budget
(`miras.experiments.ablate`). Perplexity only by default (the paper's ablation metric is language modelling); MQAR and NIAH
columns are added with --mqar-steps N / --niah-samples N.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    from miras.cli.compare import add_budget_flags
    from miras.experiments.ablate import DEFAULT_VALUES, STUDIES

    parser = subparsers.add_parser(
        "ablate",
        help="ablations: Moneta's p or q, or Yaad's components, under one budget",
        description="Train every point of an ablation as a language model under the same budget and report "
        "validation perplexity per point (table, and a plot of perplexity against p or q). moneta-p: p in "
        f"{list(DEFAULT_VALUES['moneta-p'])}; moneta-q: q in {list(DEFAULT_VALUES['moneta-q'])}; yaad: Yaad without "
        "its retention gate, either loss branch, its MLP memory or RoPE. Rerunning in the same --out folder skips "
        "finished points.",
    )
    parser.add_argument("study", choices=STUDIES, help="which ablation")
    parser.add_argument(
        "--values",
        type=float,
        nargs="+",
        metavar="X",
        help="p (moneta-p, each >= 1) or q (moneta-q, each > 1) values (default: the paper's)",
    )
    parser.add_argument("--out", metavar="DIR", help="output folder (default: runs/ablate-STUDY)")
    add_budget_flags(parser, ablation_defaults())
    parser.set_defaults(run=run)


def ablation_defaults():
    """compare's budget without MQAR and NIAH."""
    from miras.experiments.compare import CompareConfig

    return dataclasses.replace(CompareConfig(), mqar_steps=0, niah_samples=0)


def run(args: argparse.Namespace) -> int:
    from miras.cli.compare import budget_from_args
    from miras.experiments.ablate import ablate
    from miras.experiments.compare import TABLE_FILE

    out = args.out or f"runs/ablate-{args.study}"
    rows = ablate(args.study, budget_from_args(args, ablation_defaults()), out, args.values)
    print()
    print(Path(out, TABLE_FILE).read_text(encoding="utf-8"), end="")
    print(
        f"\nwrote {out}/{TABLE_FILE}, results.json, loss.png"
        + (", ablation.png" if args.study != "yaad" else "")
        + " and runs/<point>/"
    )
    return 1 if any(row["errors"] for row in rows) else 0
