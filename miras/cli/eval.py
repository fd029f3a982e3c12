"""`miras eval`: evaluations of a trained run.

miras eval ppl --checkpoint RUN [--data sotu|wiki|PATH ...] [--context-len N] [--stride S] [--max-tokens N]
               [--out DIR]
miras eval zeroshot --checkpoint RUN [...]      the paper's Table 2 suite (miras.lmeval.zeroshot; needs lm-eval)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from miras.checks import check_int

# Packages `miras eval zeroshot` needs beyond the base install; a missing one means the "eval" extra is not installed.
ZEROSHOT_PACKAGES = ("lm_eval", "transformers", "accelerate")
EVAL_DIR = "eval"  # default output folder, inside the run folder


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a trained run: perplexity (ppl) or the zero-shot suite (zeroshot)",
        description="Evaluate a trained run.",
    )
    commands = parser.add_subparsers(dest="eval_command", required=True, metavar="EVALUATION")

    ppl = commands.add_parser(
        "ppl",
        help="perplexity, bits per byte and loss by context position on text",
        description="Perplexity and bits per byte of a trained run on text, read in windows of --context-len tokens "
        "(disjoint, or sliding by --stride with only the new tokens scored: every token is scored exactly once). "
        "Prints a table and writes ppl-ctxN-strideS.json and a per-position loss plot (.png) to --out.",
    )
    ppl.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN",
        help="a run folder (its latest checkpoint) or a checkpoint folder inside one",
    )
    ppl.add_argument(
        "--data",
        nargs="+",
        default=["sotu"],
        metavar="DATA",
        help="text to score, each reported separately: an embedded corpus (sotu, wiki: their validation "
        "split), the run's own --data (its held-out part) or another .txt/.jsonl file, folder or glob "
        "(all of it) (default: sotu)",
    )
    ppl.add_argument(
        "--context-len", type=int, metavar="N", help="tokens per window (default: the run's training --seq-len)"
    )
    ppl.add_argument(
        "--stride",
        type=int,
        metavar="S",
        help="tokens between window starts, 1 .. --context-len; only each window's last S predictions "
        "are scored (default: --context-len, disjoint windows)",
    )
    ppl.add_argument(
        "--max-tokens",
        type=int,
        metavar="N",
        help="score only the first N tokens of each data set (default: all of it)",
    )
    ppl.add_argument("--batch-size", type=int, default=8, metavar="B", help="windows per forward (default: 8)")
    ppl.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="(default: auto)")
    ppl.add_argument("--cache-dir", metavar="DIR", help="token cache folder (default ~/.cache/miras/tokens)")
    ppl.add_argument("--out", metavar="DIR", help=f"output folder (default: RUN/{EVAL_DIR})")
    ppl.set_defaults(run=run_ppl)

    # Every word after "zeroshot" goes to miras.lmeval.zeroshot unparsed, --help included: the only prefix
    # character of this parser is "+", so argparse takes "--checkpoint" etc. for positional words.
    zeroshot = commands.add_parser(
        "zeroshot",
        add_help=False,
        prefix_chars="+",
        help="the paper's Table 2 zero-shot suite through lm-eval (needs pip install 'miras[eval]'); "
        "'miras eval zeroshot --help' lists its flags",
    )
    zeroshot.add_argument("zeroshot_argv", nargs="*", help=argparse.SUPPRESS)
    zeroshot.set_defaults(run=run_zeroshot)


def run_zeroshot(args: argparse.Namespace) -> int:
    try:
        from miras.lmeval.zeroshot import main
    except ImportError as e:
        # miras.lmeval re-raises a missing dependency as an ImportError caused by the ModuleNotFoundError.
        missing = e if isinstance(e, ModuleNotFoundError) else e.__cause__
        if not isinstance(missing, ModuleNotFoundError) or (missing.name or "").split(".")[0] not in ZEROSHOT_PACKAGES:
            raise
        name = missing.name.split(".")[0]
        raise ValueError(
            f"zeroshot needs the package {name!r}, which is not installed: pip install 'miras[eval]'"
        ) from None
    return main(args.zeroshot_argv)


def run_ppl(args: argparse.Namespace) -> int:
    # Imported here, not at the top, so that `miras --help` does not load matplotlib.
    import numpy as np

    from miras.data import held_out_split, token_stream
    from miras.device import resolve_device
    from miras.eval.ppl import evaluate_ppl
    from miras.io_atomic import write_text_atomic
    from miras.plots import plot_position_loss
    from miras.run.checkpoint import load_trained, resolve_checkpoint
    from miras.run.folder import read_config

    check_positive(args, "context_len", "stride", "max_tokens", "batch_size")
    device = resolve_device(args.device)
    try:
        run_dir, checkpoint = resolve_checkpoint(args.checkpoint)
        train_config = read_config(run_dir)["train"]
    except ValueError as e:
        raise ValueError(f"--checkpoint: {e}") from None
    context_len = args.context_len or train_config["seq_len"]
    stride = args.stride or context_len
    if stride > context_len:  # checked before the model loads
        raise ValueError(
            f"--stride {stride} is larger than --context-len {context_len}"
            f"{'' if args.context_len else ' (the run training length)'}; windows would skip tokens"
        )
    try:
        model, tokenizer = load_trained(checkpoint, device)
    except ValueError as e:
        raise ValueError(f"--checkpoint: {e}") from None
    out = Path(args.out) if args.out else run_dir / EVAL_DIR
    out.mkdir(parents=True, exist_ok=True)  # before the evaluation: an output path in the way fails at once

    results = {}
    for spec in args.data:
        # Like the trainer's validation sets: never score text the run was trained on.
        split = held_out_split(spec, train_config["data"])
        stream = token_stream(spec, tokenizer, split, cache_dir=args.cache_dir, progress=False)
        text = stream[: args.max_tokens] if args.max_tokens else stream
        # EOS first: the separator every training document followed, so the first token is scored in context.
        tokens = np.concatenate([[tokenizer.eos_id], text]).astype(np.int64)
        try:
            results[spec] = evaluate_ppl(model, tokenizer, tokens, context_len, stride, args.batch_size, device)
        except ValueError as e:  # e.g. a file of a single token
            raise ValueError(f"--data {spec}: {e}") from None

    stem = f"ppl-ctx{context_len}-stride{stride}"
    record = {
        "checkpoint": str(checkpoint),
        "context_len": context_len,
        "stride": stride,
        "max_tokens": args.max_tokens,
        "results": {spec: r.to_dict() for spec, r in results.items()},
    }
    write_text_atomic(out / f"{stem}.json", json.dumps(record, indent=1) + "\n")
    # With stride < context_len, positions below context_len - stride are scored by the first window only: one
    # sample each, too noisy to show next to the averages over every window.
    first = context_len - stride
    plot_position_loss(
        {spec: [math.nan] * first + r.position_loss[first:] for spec, r in results.items()},
        out / f"{stem}.png",
        title=f"loss by position ({checkpoint.name}, context {context_len}, stride {stride})",
    )

    print(f"{checkpoint}: context {context_len}, stride {stride}")
    print(f"{'data':<24} {'tokens':>10} {'bytes':>11} {'ppl':>9} {'bpb':>7} {'acc':>6}")
    for spec, r in results.items():
        print(
            f"{spec:<24} {r.num_tokens:>10,} {r.num_bytes:>11,} {r.perplexity:>9.2f} {r.bits_per_byte:>7.4f} "
            f"{r.token_accuracy:>6.1%}"
        )
    print("\nmean loss (nats) by context position: does it keep falling with more context?")
    if first:
        print(f"(positions 1-{first} are scored by the first window only and are left out)")
    bins = [(max(lo, first), hi) for lo, hi in _position_bins(context_len) if hi > first]
    print(f"{'data':<24} " + " ".join(f"{_bin_label(lo, hi):>10}" for lo, hi in bins))
    for spec, r in results.items():
        print(f"{spec:<24} " + " ".join(f"{_binned(r.position_loss, lo, hi):>10.3f}" for lo, hi in bins))
    print(f"\nwrote {out / stem}.json and .png")
    return 0


def check_positive(args: argparse.Namespace, *names: str) -> None:
    """Each of these flags, when given, is an integer >= 1 (ValueError naming the flag)."""
    for name in names:
        if getattr(args, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(args, name))


def _position_bins(context_len: int) -> list[tuple[int, int]]:
    """0-based positions [lo, hi) in doubling bins [0, 1), [1, 2), [2, 4), [4, 8), ..., the last cut at context_len:
    the loss changes fastest early on, so equal-width bins would hide the start."""
    bins, lo = [], 0
    while lo < context_len:
        hi = min(max(2 * lo, 1), context_len)
        bins.append((lo, hi))
        lo = hi
    return bins


def _bin_label(lo: int, hi: int) -> str:
    """1-based positions, as a reader counts tokens: "1", "3-4"."""
    return str(hi) if hi == lo + 1 else f"{lo + 1}-{hi}"


def _binned(position_loss: list[float], lo: int, hi: int) -> float:
    """Mean of the per-position means in [lo, hi); NaN for a bin past the end of a text shorter than one window."""
    values = position_loss[lo:hi]
    return sum(values) / len(values) if values else math.nan
