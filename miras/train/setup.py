"""Everything a run needs before its first step: its task (the data and the evaluations: lm_task.py for text,
mqar_task.py for MQAR), the run folder, the model and its optimizer, restored from the latest checkpoint when resuming.
`train` (loop.py) calls `start_run` and then only steps.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from miras.config import ModelConfig
from miras.layers.miras_layer import use_compiled_steps
from miras.models import MirasLM
from miras.run.folder import MetricsLog, new_run_dir, read_config, write_config
from miras.run.lock import RunInUse, RunLock
from miras.train import lm_task, mqar_task
from miras.train.checkpoint import load_checkpoint
from miras.train.config import MQAR, ConfigError, TrainConfig
from miras.train.distributed import Distributed, parallelize
from miras.train.optim import build_optimizer, exempt_names
from miras.train.parts import Run


def start_run(
    config: TrainConfig,
    distributed: Distributed,
    locks: contextlib.ExitStack,
    log: Callable[[str], None] | None = None,
) -> Run:
    """Rank 0 goes first: it prepares the task (trains the tokenizer, fills the token cache) and creates the folder
    only once the data checked out (bad data leaves nothing behind); the other ranks then read the resolved configs
    and the tokenizer from the folder and the tokens from the cache. `locks` receives the run folder's lock (rank 0);
    `log` rank 0's lines (default: tqdm.write)."""
    if config.batch_size % distributed.world_size:
        raise ConfigError(
            "batch_size",
            f"the global batch of {config.batch_size} sequences does not split evenly "
            f"over {distributed.world_size} processes",
        )
    device, main = distributed.device, distributed.is_main
    if device.type == "cpu":  # the processes of a node share its cores
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(config.threads if config.threads > 0 else max(1, cores // distributed.local_world_size))
    log = (log or tqdm.write) if main else _quiet  # tqdm.write prints without breaking the progress bar
    run_dir = None
    if main:
        if config.resume:  # one writer per run folder, from before anything in it is read
            try:
                locks.enter_context(RunLock.acquire(config.resume, log))
            except RunInUse as e:
                raise ConfigError("resume", str(e)) from None
        config, model_config, task = _prepare(config, None, config.progress)
        if config.resume:
            run_dir = Path(config.resume)
        else:
            try:
                run_dir = new_run_dir(config.out_dir, model_config.preset, locks, log)
            except ValueError as e:
                raise ConfigError("out_dir", str(e)) from None
            config = config.replace(out_dir=str(run_dir.absolute()))
            task.save(run_dir)
            write_config(run_dir, config.to_dict(), model_config.to_dict())
    run_dir = Path(distributed.broadcast(str(run_dir), setup=True))
    if not main:
        config, model_config, task = _prepare(config, run_dir, False)

    torch.manual_seed(config.seed)  # right before the model: every rank builds the same initial weights
    model = MirasLM(model_config).to(device)
    exempt = exempt_names(model)  # before parallelize: FSDP's shards do not carry the modules' marks
    trained = parallelize(model, config.parallel, distributed)  # FSDP shards `model` in place; DDP wraps it
    if config.compile:  # the memory ops run with compiled chunk steps, outside the model's graph
        use_compiled_steps(model)
    optimizer, scheduler, schedule = build_optimizer(  # after parallelize: under FSDP the parameters are the shards
        model,
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=config.betas,
        warmup=config.warmup_steps,
        total=None if config.max_steps == -1 else config.max_steps,
        min_ratio=config.min_lr_ratio,
        device=device,
        exempt=exempt,
    )
    run = Run(
        config,
        model_config,
        task,
        run_dir,
        model,
        torch.compile(trained) if config.compile else trained,
        optimizer,
        scheduler,
        schedule,
        distributed,
        _autocast(device, config.dtype),
        log,
        MetricsLog(run_dir) if main else None,
        {"step": 0, "tokens": 0, "elapsed_s": 0.0},
        [],
    )
    if config.resume:
        _resume(run)
    return run


def _resume(run: Run) -> None:
    """Restore the latest checkpoint into `run`; re-plan the schedule for a new max_steps."""
    config = run.config
    run.counters = load_checkpoint(run.run_dir, run.model, run.optimizer, run.scheduler)
    step = run.counters["step"]
    if config.max_steps not in (-1, run.schedule.total):
        # `--resume RUN --max-steps N` with a new N: the checkpoint's schedule would stop the run at its old length,
        # so the cosine is re-planned to end at N (the learning rate continues on the longer curve).
        run.schedule.total = config.max_steps
        for group, base_lr in zip(run.optimizer.param_groups, run.scheduler.base_lrs):
            group["lr"] = base_lr * run.schedule(step)
    lone_cpu = run.device.type == "cpu" and not run.distributed.enabled
    if config.threads == 0 and run.counters.get("threads") and lone_cpu:
        torch.set_num_threads(run.counters["threads"])  # what the first session's probe chose (a lone process)
    if run.main:
        run.history = run.metrics.truncate_after(step)
        # The flags a resume may change (RESUMABLE) go into config.json: it says what the run did.
        write_config(run.run_dir, config.to_dict(), run.model_config.to_dict())
        done = config.max_steps != -1 and step >= config.max_steps
        run.log(
            f"resuming {run.run_dir} at step {step}"
            + (
                f": max_steps={config.max_steps} is reached, so only the final evaluation runs (give a larger "
                "--max-steps to train on)"
                if done
                else ""
            )
        )


def _prepare(config: TrainConfig, run_dir: Path | None, progress: bool) -> tuple:
    """(config, model config, task) of a run. A resumed run, or a fresh one whose `run_dir` rank 0 already made,
    takes the resolved configs from its folder; a fresh one resolves them in its task's `prepare`."""
    source, model_config = config.resume or run_dir, None
    if source:
        saved = read_config(source)
        model_config = ModelConfig.from_dict(saved["model"])
        if not config.resume:
            config = TrainConfig.from_dict(saved["train"])
    if config.data == MQAR:
        return mqar_task.prepare(config, model_config)
    return lm_task.prepare(config, source, model_config, progress)


def describe(run: Run) -> None:
    """The run's start-up lines: where it writes, the model, the data and the optimization."""
    config, model_config, model = run.config, run.model_config, run.model
    run.log(f"run folder: {run.run_dir}")
    run.log(
        f"model: {model_config.preset} {config.size}: {model.num_parameters() / 1e6:.2f}M parameters "
        f"({model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M without embeddings), hidden "
        f"{model_config.hidden_size}, {model_config.num_hidden_layers} layers, {model_config.num_heads} heads, "
        f"chunk {model_config.chunk_size}; device {run.device}, {torch.get_num_threads()} threads"
    )
    if run.distributed.enabled:
        run.log(
            f"distributed: {run.distributed.world_size} processes ({config.parallel}), {run.local_batch} "
            f"sequences of each batch per process"
        )
    run.log(run.task.describe())
    run.log(
        f"optimization: {config.batch_size} x {config.seq_len} x {config.grad_accum} = "
        f"{config.tokens_per_step:,} tokens/step, lr {config.lr:g} (warm-up {config.warmup_steps}, cosine to "
        f"{config.lr * config.min_lr_ratio:g}), weight decay {config.weight_decay:g}"
    )


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager | None:
    """bf16 autocast on CUDA ("auto" or "bfloat16"); float32 everywhere else."""
    if device.type == "cuda" and dtype in ("auto", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dtype == "bfloat16":
        raise ConfigError("dtype", f"bfloat16 autocast is for CUDA, but the device is {device}")
    return None


def tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard", "needs the tensorboard package: pip install 'miras[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
