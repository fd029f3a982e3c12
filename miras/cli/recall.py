"""`miras recall`: synthetic recall benchmarks (niah scores a trained run; mqar trains models on the task).

Each task is its own module that defines `register(subparsers)`, adding its parser to the `recall` group and setting
`run=<function(args) -> exit code>`, like the top-level commands. Adding a task is one line in TASKS.
"""

from __future__ import annotations

import argparse
import importlib

TASKS = (
    "miras.cli.recall_niah",
    "miras.cli.recall_mqar",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recall",
        help="synthetic recall: niah (needle in a haystack, a trained run), mqar (train and score models)",
        description="Synthetic recall benchmarks: `niah` scores a trained run on needle-in-a-haystack retrieval; "
        "`mqar` trains models on multi-query associative recall over a sweep and reports accuracy.",
    )
    tasks = parser.add_subparsers(dest="recall_command", required=True, metavar="TASK")
    for module in TASKS:
        importlib.import_module(module).register(tasks)
