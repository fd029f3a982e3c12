"""`check_int`: the one check of an integer argument or field (a count, a size, a seed), with one wording for every
command, config and function: "<name> must be >= 1, got 0", "<name> must be an integer, got 2.5". `positive_int` and
`nonnegative_int` are the same check as argparse types: a bad number is refused by the parser, naming the flag
("argument --batch: must be >= 1, got 0"), before anything runs."""

from __future__ import annotations

import argparse
from typing import Callable


def int_problem(value: object, low: int = 1, unset: int | None = None) -> str | None:
    """What is wrong with `value` as an integer >= `low` (or exactly the sentinel `unset`), or None. A bool is not an
    integer here (True would pass as 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return "must be an integer"
    if value < low and value != unset:
        return f"must be >= {low}" + (f" (or {unset}: unset)" if unset is not None else "")
    return None


def check_int(
    name: str,
    value: object,
    low: int = 1,
    *,
    unset: int | None = None,
    error: Callable[[str, str], Exception] | None = None,
) -> int:
    """`value` when it is an integer >= `low` (or `unset`); else raise `error(name, problem)` (a ConfigError, say) or,
    by default, ValueError("<name> <problem>")."""
    problem = int_problem(value, low, unset)
    if problem is None:
        return value
    problem += f", got {value!r}"
    raise error(name, problem) if error is not None else ValueError(f"{name} {problem}")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
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
