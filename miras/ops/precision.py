"""The precision the memory op computes in: float32 (float64 for float64 input) whatever its inputs' dtype, inside an
autocast region too; and TF32 matmuls on CUDA for runs that trade float32's precision for tensor-core speed."""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (tests); everything else (float32, bfloat16, float16) computes in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


# The device types with an autocast, asked once at import: dynamo (torch 2.11) cannot trace
# torch.amp.is_autocast_available inside a compiled op, a set lookup it can.
AUTOCAST_DEVICES = frozenset(d for d in ("cpu", "cuda", "xpu", "hpu", "mps") if torch.amp.is_autocast_available(d))


def without_autocast(op: Callable) -> Callable:
    """`op` with autocast off on its inputs' device while it runs, so that it computes in `compute_dtype` inside a
    bf16/fp16 autocast region too (`miras train` runs the model under bf16 autocast on CUDA).

    Autocast would run the op's matmuls in bf16, those that build the memory's weights chunk after chunk included,
    and the function would no longer be the one tested. Measured on CPU autocast (B=1, H=2, K=V=16, T=80, chunk 16),
    against float32 on the same inputs: Memora's output 92% off (rounding q, k, v to bf16 moves it 1%), and the
    gated_deltanet state came back in bf16. The output keeps q's dtype: the layer around the op still runs in bf16.
    The backward is covered when it runs outside the autocast region (torch's advice; `miras train` does): inside
    it, autocast recasts the backward's matmuls whatever the forward ran in."""

    @functools.wraps(op)
    def run(*args, **kwargs):
        device = next((x.device.type for x in (*args, *kwargs.values()) if isinstance(x, torch.Tensor)), None)
        with torch.autocast(device, enabled=False) if device in AUTOCAST_DEVICES else contextlib.nullcontext():
            return op(*args, **kwargs)

    return run


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """While the block runs, float32 matmuls on CUDA use TF32 tensor cores (10 explicit mantissa bits instead of 23)
    when `enabled`; the previous setting comes back after it. It covers the memory op, which computes in float32 under
    bf16 autocast, and float32 runs. torch's legacy flag (`torch.backends.cuda.matmul.allow_tf32`), which keeps its
    newer `fp32_precision` setting in step: setting only the newer one makes `torch.get_float32_matmul_precision()`
    raise. No effect on CPU matmuls."""
    if not enabled:
        yield
        return
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32 = before
