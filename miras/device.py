"""`resolve_device`: the one place that turns a device name from a flag or a config into a torch.device, so that every
command says "auto" the same way and refuses a missing GPU with the same message."""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

CHOICES = ("auto", "cpu", "cuda")  # what the command-line flags offer; "cuda:N" is accepted too


def resolve_device(
    name: str | None,
    field: str = "--device",
    *,
    error: Callable[[str, str], Exception] | None = None,
    cuda_fallback: bool = False,
) -> torch.device:
    """ "auto" (or None): CUDA when torch sees a GPU, else the CPU; "cpu", "cuda", "cuda:N" as given.

    A bad name, or CUDA on a machine where torch sees none, raises `error(field, problem)` (default: a ValueError
    "<field>: <problem>"; pass train.config.ConfigError to raise that), or with `cuda_fallback` gives the CPU and
    logs a warning (lm-eval's own command line asks for cuda:0 unless told otherwise)."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise _error(error, field, f"{name!r} is not a device; choose one of {', '.join(CHOICES)} or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        if cuda_fallback:
            log.warning("%s %s requested but torch sees no CUDA device; using the CPU", field, name)
            return torch.device("cpu")
        raise _error(error, field, f"{name} was asked for but torch sees no CUDA device")
    return device


def _error(error: Callable[[str, str], Exception] | None, field: str, problem: str) -> Exception:
    return error(field, problem) if error is not None else ValueError(f"{field}: {problem}")
