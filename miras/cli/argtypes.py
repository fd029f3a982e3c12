"""argparse types for counts; they live in miras.checks (below every command's package) and keep this name for
existing imports."""

from miras.checks import nonnegative_int, positive_int

__all__ = ["nonnegative_int", "positive_int"]
