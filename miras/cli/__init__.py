"""The `miras` command line. Every subcommand lives in its own module, which defines `register(subparsers)`: it adds
its parser and sets `run=<function(args) -> exit code>` as a default. Adding a subcommand is one line in COMMANDS.

User errors (bad flags, bad data, a run folder without a checkpoint) are ValueErrors in this library; they are
printed as one line naming the problem, without a traceback, and exit with status 2. So are the OSErrors of a
path in the way (an output folder that is a file, a folder without write permission).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = (
    "miras.cli.train",
    "miras.cli.generate",
    "miras.cli.convert",
    "miras.cli.bench",
    "miras.cli.eval",
    "miras.cli.recall",
    "miras.cli.compare",
    "miras.cli.ablate",
)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("miras")
    except PackageNotFoundError:  # a checkout on PYTHONPATH that is not installed
        return "(not installed)"


def main(argv: list[str] | None = None) -> int:
    # Nothing may reach the Hugging Face hub: offline, its loaders fail at once instead of retrying for minutes.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # silences the fork warning of `tokenizers`
    parser = argparse.ArgumentParser(prog="miras", description="Miras sequence models: train, sample, evaluate.")
    parser.add_argument("--version", action="version", version=f"miras {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        importlib.import_module(module).register(subparsers)
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # the words of the command, for commands that record them
    try:
        return args.run(args) or 0
    except ValueError as e:
        field = getattr(e, "field", None)  # a ConfigError names the TrainConfig field: show it as its flag
        message = f"--{field.replace('_', '-')}: {str(e).removeprefix(field + ': ')}" if field else str(e)
        print(f"miras {args.command}: error: {message}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as e:  # an output path in the way
        print(f"miras {args.command}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"miras {args.command}: interrupted", file=sys.stderr)
        return 130
