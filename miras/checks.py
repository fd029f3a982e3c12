"""`check_int`: the one check of an integer argument or field (a count, a size, a seed), with one wording for every
command, config and function: "<name> must be >= 1, got 0", "<name> must be an integer, got 2.5"."""

from __future__ import annotations

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
