"""Timers and peak-memory probes that work the same way on CPU and CUDA.

Comparisons are taken side by side: `compare` runs the contenders round-robin in one process, so load from other
processes on a shared machine hits all of them alike, and reports the median of each one's samples.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Hashable, Iterator

import torch

Fn = Callable[[], object]


@dataclass(frozen=True)
class Settings:
    """How to measure. slow_repeats: timed calls of the slow references (the token loop, titans-pytorch)."""

    device: torch.device
    dtype: torch.dtype
    repeats: int
    warmup: int
    slow_repeats: int


@dataclass
class Timing:
    """Wall-clock seconds of each timed call (warm-up calls excluded)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.samples), "samples_s": self.samples}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Fn, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def compare(
    fns: dict[Hashable, Fn],
    *,
    device: torch.device,
    repeats: int | dict[Hashable, int],
    warmup: int,
    warmup_fns: dict[Hashable, Fn] | None = None,
) -> dict[Hashable, Timing]:
    """Time every fn `repeats` times (an int, or one count per name) after `warmup` untimed calls, round-robin. The
    names are any keys (strings, or tuples such as (preset, kind)).

    warmup_fns replaces a contender's warm-up call (a slow reference can warm up on a short input). The start of
    each round rotates, so no contender always runs right after the same neighbour.
    """
    counts = repeats if isinstance(repeats, dict) else {name: repeats for name in fns}
    for name, fn in fns.items():
        for _ in range(warmup):
            (warmup_fns or {}).get(name, fn)()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(max(counts.values())):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            if r < counts[name]:
                samples[name].append(time_call(fns[name], device))
    return {name: Timing(s) for name, s in samples.items()}


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side prints a log line at every start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Fn, device: torch.device) -> int:
    """Peak bytes of tensor memory allocated during fn() above what was allocated before the call.

    CUDA: the caching allocator's own counter (torch.cuda.max_memory_allocated). CPU: torch has no such counter, so
    fn runs once under torch.profiler with profile_memory=True, which records every allocation and free of the c10
    CPU allocator (autograd's saved tensors, gradients and the temporaries inside ATen ops included; memory that a
    BLAS library allocates privately is not seen); the peak of their running sum is the answer. The profiler slows
    the call down, so this is a separate, untimed run.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        prof.start()
    try:
        fn()
    finally:
        with _quiet_stderr():
            prof.stop()
    events: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            events.append((node.start_time_ns, node.extra_fields.alloc_size))  # negative for a free
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(events):
        live += size
        peak = max(peak, live)
    return peak


def _status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def rss_rise(fn: Fn) -> int | None:
    """Linux with glibc (None elsewhere): how far the process's resident set rose during fn(), the operating
    system's view of the same call. It counts everything peak_memory does not (glibc's fragmentation and the freed
    memory it keeps, BLAS buffers, the autograd graph), so it is larger; it depends on the allocator, not only on the
    op. Freed heap memory is first returned to the system (malloc_trim) and the high-water mark reset
    (/proc/self/clear_refs), so that earlier calls' leftovers neither hide nor add to the rise."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        base = _status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except (OSError, StopIteration):
        return None
    fn()
    return _status_bytes("VmHWM") - base


def matmul_fn(device: torch.device, shape: tuple[int, int, int]) -> Fn:
    """One float32 (m×k)@(k×n) matmul (2mkn FLOPs): the machine's own throughput anchor, timed beside the op."""
    m, k, n = shape
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    return lambda: a @ b
