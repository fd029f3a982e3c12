"""`miras bench`: the performance suite (op level, comparisons, model level). See benchmarks/README.md.

The default run is a quick subset sized for about ten minutes on an idle 2-core CPU; `--full` runs the whole grid.
Results go to OUT/bench.json, OUT/bench.md and OUT/time_vs_T.png, rewritten after every section.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

import torch

from miras import presets
from miras.bench import fidelity, model, ops
from miras.bench.report import say, write_all
from miras.bench.timing import Settings
from miras.checks import nonnegative_int, positive_int
from miras.device import resolve_device
from miras.ops.precision import tf32_matmuls

SECTIONS = ("grid", "naive", "linear", "titans", "memory", "model", "compile", "fidelity")
DEFAULT_SECTIONS = SECTIONS  # the compile section only counts graph breaks unless --compile (compiling takes minutes)

# Quick (default) and --full settings; explicit flags override either. The quick grid reaches T = 8192 so that the
# SDPA crossover of an MLP preset (Moneta), which lies around T = 4096, is measured, not extrapolated.
QUICK = dict(
    presets=["moneta", "moneta" + ops.COMPILE_STEPS, "gated_deltanet"],
    seq_lens=[512, 1024, 2048, 4096, 8192],
    chunk_sizes=[64],
    repeats=3,
    warmup=1,
    slow_repeats=1,
    memory_presets=["gated_deltanet", "moneta"],
    model_size="tiny",
    train_seq_lens=[256, 1024],
    decode_contexts=[256, 1024, 4096, 8192],
    decode_steps=16,
    compile_presets=["gated_deltanet", "moneta"],
)
FULL = dict(
    presets=[*presets.PRESETS, *(name + ops.COMPILE_STEPS for name in ops.MLP_PRESETS)],
    seq_lens=[512, 1024, 2048, 4096, 8192, 16384],
    chunk_sizes=[16, 32, 64, 128],
    repeats=5,
    warmup=1,
    slow_repeats=3,
    memory_presets=[*ops.LINEAR_PRESETS, *ops.MLP_PRESETS],
    model_size="small",
    train_seq_lens=[512, 1024, 2048, 4096],
    decode_contexts=[256, 512, 1024, 2048, 4096, 8192],
    decode_steps=32,
    compile_presets=list(presets.PRESETS),
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miras bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The suite's flags, on a standalone parser or on the `miras bench` subcommand."""
    p.add_argument(
        "--full", action="store_true", help="the whole grid (all presets, T up to 16384, chunk sizes 16-128)"
    )
    p.add_argument(
        "--only", nargs="+", choices=SECTIONS, help=f"run only these sections (default: {' '.join(DEFAULT_SECTIONS)})"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also compile the op and time it (minutes per preset on a CPU); without it the compile section only counts graph breaks",
    )
    p.add_argument(
        "--presets",
        nargs="+",
        choices=[*presets.PRESETS, *(name + ops.COMPILE_STEPS for name in presets.PRESETS)],
        help=f"presets of the time/memory grid; NAME{ops.COMPILE_STEPS} times chunk_miras(compile_steps=True)",
    )
    p.add_argument("--seq-lens", nargs="+", type=positive_int, help="sequence lengths T of the grid")
    p.add_argument(
        "--chunk-sizes", nargs="+", type=positive_int, help="chunk sizes of the grid (SDPA is timed beside the first)"
    )
    p.add_argument(
        "--batch", type=positive_int, default=2, help="B of the op benchmarks and the model's training batch"
    )
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--head-dim", type=positive_int, default=64, help="K = V")
    p.add_argument("--repeats", type=positive_int, help="timed calls per measurement (the median is reported)")
    p.add_argument("--warmup", type=nonnegative_int, help="untimed calls before timing")
    p.add_argument(
        "--slow-repeats", type=positive_int, help="timed calls of the slow references (token loop, titans-pytorch)"
    )
    p.add_argument(
        "--naive-T", type=positive_int, default=2048, help="T of the chunk-vs-token-loop comparison (Moneta)"
    )
    p.add_argument(
        "--linear-T", type=positive_int, default=8192, help="T of the gated-delta-rule and matmul-roof comparison"
    )
    p.add_argument(
        "--memory-T", nargs=2, type=positive_int, default=[8192, 16384], help="the two T of the peak-memory ratio"
    )
    p.add_argument(
        "--memory-presets", nargs="+", choices=list(presets.PRESETS), help="presets of the peak-memory ratio"
    )
    p.add_argument(
        "--titans-T", type=positive_int, default=1024, help="T of the titans-pytorch comparison (B=2, dim 256)"
    )
    p.add_argument("--compile-T", type=positive_int, default=1024)
    p.add_argument(
        "--fidelity-T",
        type=positive_int,
        default=2048,
        help="T of the fidelity section's timing of the in-chunk step rules (its distances use T=256)",
    )
    p.add_argument("--compile-presets", nargs="+", choices=list(presets.PRESETS))
    p.add_argument("--model-size", choices=["tiny", "small", "170m", "340m", "780m", "1.3b"])
    p.add_argument(
        "--train-seq-lens", nargs="+", type=positive_int, help="T of the model training-throughput benchmark"
    )
    p.add_argument(
        "--decode-contexts", nargs="+", type=positive_int, help="context lengths of the decode-latency benchmark"
    )
    p.add_argument("--decode-steps", type=positive_int, help="timed decode steps per context")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--tf32",
        action="store_true",
        help="CUDA only: float32 matmuls on TF32 tensor cores, the op's included (it computes in float32 whatever --dtype)",
    )
    p.add_argument("--threads", type=positive_int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def main(argv: list[str] | None = None) -> int:
    command = ["miras", "bench", *(sys.argv[1:] if argv is None else argv)]
    return run(parser().parse_args(argv), command)


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Run the suite for parsed flags; `command` (the words that started it) is recorded with the results."""
    try:
        device = resolve_device(args.device)
        if args.tf32 and device.type != "cuda":
            raise ValueError(f"--tf32 is for CUDA GPUs, but --device is {args.device}")
    except ValueError as problem:
        print(f"miras bench: {problem}", file=sys.stderr)
        return 2
    with tf32_matmuls(args.tf32):  # the correctness checks run in float64, which TF32 leaves alone
        return _run(args, command, device)


def _run(args: argparse.Namespace, command: list[str], device: torch.device) -> int:
    plan = {**(FULL if args.full else QUICK), **{k: v for k, v in vars(args).items() if v is not None and k in QUICK}}
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(device, getattr(torch, args.dtype), plan["repeats"], plan["warmup"], plan["slow_repeats"])
    shape = ops.Shape(args.batch, args.heads, args.head_dim)
    sections = list(args.only or DEFAULT_SECTIONS)
    results: dict = {
        "meta": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": shlex.join(command),
            "device": str(device),
            "device_name": _device_name(device),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "dtype": args.dtype,
            "tf32": args.tf32,
            "shape": dataclasses.asdict(shape),
            "sections": sections,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "slow_repeats": settings.slow_repeats,
            "memory_method": "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler allocation events of the CPU allocator (peak of their running sum)",
        }
    }

    # Every preset a section will time passes the correctness gate first.
    uses = {
        "grid": plan["presets"],
        "naive": ["moneta"],
        "linear": ops.LINEAR_PRESETS,
        "titans": ops.MLP_PRESETS,
        "memory": plan["memory_presets"],
        "compile": plan["compile_presets"],
        "fidelity": ["moneta", "memora"],
    }
    op_presets = sorted({name for s in sections for name in uses.get(s, ())})
    try:
        results["correctness"] = ops.check_correctness(op_presets, device)
    except ops.CorrectnessError as error:
        print(f"miras bench: correctness check failed, nothing timed: {error}", file=sys.stderr)
        return 2

    def section(name: str, run, key: str | None = None) -> None:
        if name in sections:
            results[key or name] = run()
            write_all(results, args.out)

    section("grid", lambda: ops.run_grid(settings, shape, plan["presets"], plan["seq_lens"], plan["chunk_sizes"]))
    if results.get("grid"):
        results["crossover"] = ops.sdpa_crossover(results["grid"])
    section("naive", lambda: ops.run_naive(settings, shape, T=args.naive_T))
    section("linear", lambda: ops.run_linear(settings, shape, T=args.linear_T))
    section("titans", lambda: ops.run_titans(settings, T=args.titans_T))
    section(
        "memory",
        lambda: ops.run_memory_scaling(settings, shape, plan["memory_presets"], tuple(args.memory_T)),
        "memory_scaling",
    )
    section(
        "model",
        lambda: model.run_model(
            settings,
            names=("moneta", "transformer"),
            size=plan["model_size"],
            train_seq_lens=plan["train_seq_lens"],
            batch=args.batch,
            decode_contexts=plan["decode_contexts"],
            decode_steps=plan["decode_steps"],
        ),
    )
    section(
        "compile",
        lambda: ops.run_compile(settings, shape, plan["compile_presets"], T=args.compile_T, timed=args.compile),
    )
    section("fidelity", lambda: fidelity.run_fidelity(settings, shape, T=args.fidelity_T))
    results["meta"]["load_average_at_end"] = os.getloadavg()
    paths = write_all(results, args.out)
    say("wrote " + ", ".join(map(str, paths)))
    return 0
