"""`miras recall mqar`: zoology's MQAR sweep: train each model from scratch per (sequence length, kv pairs, width,
learning rate) and report test accuracy at the query positions.

Every run trains through `miras train`'s trainer (TrainConfig data "mqar") into its own run folder under --out/runs.
Writes mqar.md (accuracy per setting: the median over --seeds at the best of --lrs, with the seeds' range),
mqar.json (every run, with its learning curve) and per (sequence length, kv pairs) an accuracy-vs-width figure, one
line per model, and a learning-curve figure, to --out. Results are saved after every run; rerunning the same command
in the same folder skips the runs already done, and more seeds (or models, widths, lrs) add to it.
"""

from __future__ import annotations

import argparse

# The defaults are a setting and budget past the phase change in which models learn recall (experiments README,
# "Recall: where models learn it"): 4 pairs in 32 tokens, width 64, one head (zoology's shape), 1000 steps of 64,
# the best of three learning rates, three seeds. A width-64 transformer and gated DeltaNet pass 96% by step 600 at
# lr 3e-3 on every seed measured; at lr 1e-3 (the old default) the transformer is still at 49% after 2000 steps.
# Scale --steps, --widths, --seq-lens, --kv-pairs and --vocab-size up on a GPU (zoology: vocab 8192, seq lens
# 64-256, widths 64-256, ~32 epochs of 100k examples at batch 256).
# Three models keep the default under an hour on 2 cores (the MLP memories take 3-6x the delta rule's time per
# step); every preset: --models transformer gated_deltanet gated_deltanet_per_chunk16 moneta yaad memora titans.
DEFAULT_MODELS = ("transformer", "gated_deltanet", "moneta")
DEFAULT_SEQ_LENS = (32,)
DEFAULT_KV_PAIRS = (4,)
DEFAULT_WIDTHS = (64,)
DEFAULT_LRS = (1e-3, 3e-3, 1e-2)
DEFAULT_SEEDS = (0, 1, 2)
DEFAULT_STEPS = 1000


def register(subparsers: argparse._SubParsersAction) -> None:
    from miras.experiments.mqar import MODELS

    parser = subparsers.add_parser(
        "mqar",
        help="multi-query associative recall: accuracy vs model width (zoology's sweep)",
        description="MQAR (zoology): each sequence lists key-value pairs, then queries every key once; the model must "
        "output the key's value at the query. Every (model, width, sequence length, kv pairs, lr) is trained from "
        "scratch with AdamW for --steps steps and scored on a disjoint test split.",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="MODEL",
        help=f"presets or transformer, from {', '.join(MODELS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--seq-lens",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEQ_LENS),
        metavar="T",
        help="sequence lengths; every (seq len, kv pairs) with seq len >= 4 x kv pairs is run (default: %(default)s)",
    )
    parser.add_argument(
        "--kv-pairs",
        type=int,
        nargs="+",
        default=list(DEFAULT_KV_PAIRS),
        metavar="K",
        help="key-value pairs per sequence (default: %(default)s)",
    )
    parser.add_argument(
        "--widths",
        type=int,
        nargs="+",
        default=list(DEFAULT_WIDTHS),
        metavar="D",
        help="model widths (hidden size) (default: %(default)s)",
    )
    parser.add_argument(
        "--lrs",
        type=float,
        nargs="+",
        default=list(DEFAULT_LRS),
        metavar="LR",
        help="learning rates; each point reports the one with the best median over seeds, among those run on the "
        "most seeds (default: %(default)s)",
    )
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="AdamW steps per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="examples per step (default: %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=256, help="MQAR vocabulary (default: %(default)s)")
    parser.add_argument("--layers", type=int, default=2, help="blocks per model (default: %(default)s)")
    parser.add_argument(
        "--heads",
        type=int,
        default=1,
        help="heads per mixer; must divide every width (default: %(default)s, as zoology's attention)",
    )
    parser.add_argument(
        "--train-examples",
        type=int,
        metavar="N",
        help="training set size (default: steps x batch size, at most 100000)",
    )
    parser.add_argument("--test-examples", type=int, default=1000, help="test set size (default: %(default)s)")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=list(DEFAULT_SEEDS),
        metavar="SEED",
        help="a run per seed (data, initialization and batch order); cells: median (min-max) (default: %(default)s)",
    )
    parser.add_argument(
        "--threads", type=int, default=-1, help="CPU threads per run (-1: all cores this process may use; default -1)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in a process of its own (on a CPU each gets cores / jobs threads unless "
        "--threads is given; on a GPU they share it); results do not depend on it (default: %(default)s)",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    parser.add_argument("--out", default="runs/mqar", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: report the finished runs found in --out/runs (parts of the sweep run elsewhere, their "
        "run folders copied in); the others are left out",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from miras.cli.eval import check_positive
    from miras.device import resolve_device
    from miras.experiments.mqar import make_sweep, mqar_sweep, mqar_table

    check_positive(args, "layers", "heads", "test_examples", "train_examples", "jobs")
    sweep, skipped = make_sweep(
        args.models,
        args.seq_lens,
        args.kv_pairs,
        args.widths,
        args.lrs,
        steps=args.steps,
        batch_size=args.batch_size,
        seeds=args.seeds,
        threads=args.threads,
        vocab_size=args.vocab_size,
        num_layers=args.layers,
        num_heads=args.heads,
        train_examples=args.train_examples,
        test_examples=args.test_examples,
        device=str(resolve_device(args.device)),
    )
    for seq_len, kv in skipped:
        print(f"skipped seq len {seq_len} with {kv} kv pairs: MQAR needs seq len >= 4 x kv pairs")
    records = mqar_sweep(sweep, args.out, train_missing=not args.collect, jobs=args.jobs)
    print()
    print(mqar_table(records, sweep), end="")
    print(
        f"\nwrote {args.out}/mqar.md, mqar.json, mqar-T<seq len>-kv<pairs>[-state|-curves].png and the run folders in "
        "runs/"
    )
    return 1 if any("error" in r for r in records) else 0
