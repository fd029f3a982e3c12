"""`miras bench`: the performance suite of `miras.bench` (op and model level, side-by-side ratios)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    from miras import bench

    parser = subparsers.add_parser(
        "bench",
        help="benchmark the memory op and the models",
        description=bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(parser)
    parser.set_defaults(run=lambda args: bench.run(args, ["miras", *args.argv]))
