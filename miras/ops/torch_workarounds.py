"""What miras does about torch's versions: a bug that gives wrong gradients under torch.compile (worked around in the
calls that compile), and an argument that only newer versions of torch.compile take.

**Donated buffers** (torch >= 2.6, up to at least 2.13): AOT autograd lets the compiled backward reuse the memory of a
tensor saved for backward once its last use has passed ("donates" it). It checks that the saved tensor does not
alias the graph's inputs or outputs, but not that it does not alias another saved tensor. When the forward saves a
tensor and a view of it (say the gate coefficients of all chunks and one chunk's slice of them, or x and x.T),
inductor may write into the first while the second is still to be read, and the gradients come out wrong with no
error. Found in the chunk op: `torch.compile(chunk_miras)` gave q and k gradients off by up to 1e3 (relative) for
Moneta and Memora, and a variant of the compiled chunk steps every gradient but q's.
`tests/ops/test_compiled_gradients.py` holds a ten-line reproduction and the op's cases.

miras turns donation off where it compiles, and only there: `saved_tensors_kept()` is a context
(`torch._functorch.config.patch`) in which a graph compiles with donation off, and `compile_static` /
`compile_keeping_saved_tensors` call their compiled function inside it. The setting is read when AOT autograd
partitions the forward and backward, which happens at the first call of a compiled function (and at each
recompilation), not at `torch.compile`: so it is the calls that are wrapped. `import miras` changes no torch setting.
Neither speed nor peak memory changed with donation off: Moneta fwd+bwd with compiled steps, side by side in one
process, 0.99x / 1.03x (median / minimum of 15) at T = 4096 and 1.01x / 1.01x at T = 2048; its peak (the CPU
allocator's events, inductor's caches off so that each setting compiled its own graphs) 605.4 MiB at T = 4096 either
way. Code that compiles a model holding miras layers itself should compile it with `compile_keeping_saved_tensors`,
or call it inside `saved_tensors_kept()`.

Inductor's on-disk cache keys a compiled backward by its graph, not by this setting: a backward compiled with
donation before (by an older miras, or in a process that set it back) can still be served from the cache. Clear
it (`TORCHINDUCTOR_CACHE_DIR`, by default /tmp/torchinductor_$USER) after upgrading from such a version.

**A limit on graphs per compiled function.** `torch.compile(fn, recompile_limit=n)` exists in torch 2.13 (what CI
runs) but not in 2.11 (the GPU machines' build, where it was a TypeError). There dynamo only has a process-wide limit
(`torch._dynamo.config.recompile_limit`, 8 by default), which `compile_static` raises to n around its calls instead.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable

import torch
import torch._functorch.config


def saved_tensors_kept() -> contextlib.AbstractContextManager:
    """A context in which graphs compile with AOT autograd's donated buffers off (see the module docstring); the
    setting it found is back on exit."""
    return torch._functorch.config.patch(donated_buffer=False)


def compile_keeping_saved_tensors(fn: Callable, **compile_kwargs) -> Callable:
    """torch.compile(fn, **compile_kwargs), whose calls (the first compiles, a new shape recompiles) run in
    `saved_tensors_kept()`."""
    compiled = torch.compile(fn, **compile_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with saved_tensors_kept():
            return compiled(*args, **kwargs)

    return call


def compile_static(fn: Callable, recompile_limit: int) -> Callable:
    """torch.compile(fn, dynamic=False) that may hold `recompile_limit` graphs (see the module docstring), called in
    `saved_tensors_kept()`."""
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return compile_keeping_saved_tensors(fn, dynamic=False, recompile_limit=recompile_limit)
    import torch._dynamo.config as dynamo  # torch 2.11: only the process-wide limit, raised for these calls alone

    compiled = compile_keeping_saved_tensors(fn, dynamic=False)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with dynamo.patch(recompile_limit=max(dynamo.recompile_limit, recompile_limit)):
            return compiled(*args, **kwargs)

    return call
