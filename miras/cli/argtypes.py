"""argparse types for counts: a bad number is refused by the parser, naming the flag ("argument --batch: must be
>= 1, got 0"), before anything runs."""

from __future__ import annotations

import argparse

from miras.checks import int_problem


def positive_int(text: str) -> int:
    return _at_least(text, 1)


def nonnegative_int(text: str) -> int:
    return _at_least(text, 0)


def _at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    problem = int_problem(value, low)
    if problem:
        raise argparse.ArgumentTypeError(f"{problem}, got {value}")
    return value
