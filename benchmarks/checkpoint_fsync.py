"""What the fsyncs of a durable checkpoint cost (miras/io_atomic.py): `save_checkpoint` with and without them.

    python benchmarks/checkpoint_fsync.py [--size tiny] [--repeats 11] [--dir FOLDER]

The two variants alternate (round-robin) in one process, and each reports its median, so background load hits both
alike. "without" replaces os.fsync with a no-op, which is the save as it was before the fsyncs. The folder should be
on the disk that runs use: /tmp can be a tmpfs, where fsync costs nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch

import miras.io_atomic as io_atomic
from miras.config import ModelConfig
from miras.models import MirasLM
from miras.train import save_checkpoint
from miras.train.optim import WarmupCosine, param_groups


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="named model size (default: tiny)")
    parser.add_argument("--repeats", type=int, default=11, help="saves per variant (default: 11)")
    parser.add_argument("--dir", default=".", help="where the run folder goes (default: the current folder)")
    args = parser.parse_args()

    model = MirasLM(ModelConfig.from_size(args.size, vocab_size=8192))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(2, 10, 0.1))
    model(torch.zeros(1, 8, dtype=torch.long), labels=torch.zeros(1, 8, dtype=torch.long)).loss.backward()
    optimizer.step()  # AdamW's moments exist: the checkpoint has its real size

    with tempfile.TemporaryDirectory(dir=args.dir) as root:
        run = Path(root)
        times: dict[str, list[float]] = {"with fsync": [], "without": []}
        for step in range(1, 2 * args.repeats + 3):
            variant = "with fsync" if step % 2 else "without"
            no_fsync = mock.patch.object(io_atomic.os, "fsync", lambda fd: None)
            with no_fsync if variant == "without" else contextlib.nullcontext():
                t = time.perf_counter()
                final = save_checkpoint(run, model, optimizer, scheduler, {"step": step})
                seconds = time.perf_counter() - t
            if step > 2:  # the first save of each variant pays one-off costs
                times[variant].append(seconds)
        size = sum(p.stat().st_size for p in final.iterdir())
    print(
        f"{args.size}: {model.num_parameters() / 1e6:.2f}M parameters, checkpoint {size / 1e6:.1f} MB, "
        f"{args.repeats} saves each, in {Path(args.dir).resolve()}"
    )
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in medians.items():
        low, high = min(times[name]) * 1e3, max(times[name]) * 1e3
        print(f"  {name:>10}: median {ms:7.1f} ms  (min {low:.1f}, max {high:.1f})")
    print(f"  fsync cost: {medians['with fsync'] - medians['without']:+.1f} ms per checkpoint")


if __name__ == "__main__":
    main()
