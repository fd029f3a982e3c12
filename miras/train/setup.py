"""Everything a run needs before its first step: the tokenizer, the token streams, the run folder, the model and its
optimizer, restored from the latest checkpoint when resuming. `train` (loop.py) calls `start_run` and then only steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from miras.config import ModelConfig
from miras.data import CORPORA, Tokenizer, held_out_split, iter_documents, load_corpus, token_stream
from miras.layers.miras_layer import use_compiled_steps
from miras.models import MirasLM
from miras.run.folder import TOKENIZER_DIR, MetricsLog, new_run_dir, read_config, write_config
from miras.run.lock import RunInUse, RunLock
from miras.train.checkpoint import load_checkpoint
from miras.train.config import ConfigError, TrainConfig
from miras.train.distributed import Distributed, full_model_state, is_sharded, parallelize
from miras.train.optim import WarmupCosine, build_optimizer, exempt_names

SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 50


@dataclass
class Run:
    """What a run is made of; fixed once it starts (the loop's changing state is loop.RunState)."""

    config: TrainConfig
    model_config: ModelConfig
    tokenizer: Tokenizer
    train_tokens: np.ndarray
    val_sets: dict[str, np.ndarray]  # by data spec; the first is the primary one
    run_dir: Path
    model: MirasLM  # unwrapped (checkpoints, sampling); under FSDP its parameters are the shards
    forward_model: nn.Module  # what the step calls: wrapped by DDP and/or compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    schedule: WarmupCosine
    distributed: Distributed
    autocast: contextlib.AbstractContextManager | None
    log: Callable[[str], None]
    metrics: MetricsLog | None  # rank 0 only
    counters: dict  # the checkpoint's progress counters; a fresh run's zeros
    history: list[dict]  # metrics.jsonl records kept from before a resume

    @property
    def main(self) -> bool:
        return self.distributed.is_main

    @property
    def device(self) -> torch.device:
        return self.distributed.device

    @property
    def local_batch(self) -> int:
        return self.config.batch_size // self.distributed.world_size

    @property
    def primary(self) -> str:
        return self.config.val_data[0]


def start_run(config: TrainConfig, distributed: Distributed, locks: contextlib.ExitStack) -> Run:
    """Rank 0 goes first: it trains the tokenizer, fills the token cache and creates the folder only once the data
    checked out (bad data leaves nothing behind); the other ranks then read the tokenizer and the resolved config
    from the folder and the tokens from the cache. `locks` receives the run folder's lock (rank 0)."""
    if config.batch_size % distributed.world_size:
        raise ConfigError(
            "batch_size",
            f"the global batch of {config.batch_size} sequences does not split evenly "
            f"over {distributed.world_size} processes",
        )
    device, main = distributed.device, distributed.is_main
    if device.type == "cpu":  # the processes of a node share its cores
        cores = len(os.sched_getaffinity(0))
        torch.set_num_threads(config.threads if config.threads != -1 else max(1, cores // distributed.local_world_size))
    log = tqdm.write if main else _quiet  # tqdm.write prints without breaking the progress bar
    run_dir = None
    if main:
        if config.resume:  # one writer per run folder, from before anything in it is read
            try:
                locks.enter_context(RunLock.acquire(config.resume, log))
            except RunInUse as e:
                raise ConfigError("resume", str(e)) from None
        config, tokenizer, model_config, train_tokens, val_sets = _prepare(config, None, config.progress)
        if config.resume:
            run_dir = Path(config.resume)
        else:
            try:
                run_dir = new_run_dir(config.out_dir, model_config.preset, locks, log)
            except ValueError as e:
                raise ConfigError("out_dir", str(e)) from None
            config = config.replace(out_dir=str(run_dir.absolute()))
            tokenizer.save(run_dir / TOKENIZER_DIR)
            write_config(run_dir, config.to_dict(), model_config.to_dict())
    run_dir = Path(distributed.broadcast(str(run_dir), setup=True))
    if not main:
        config, tokenizer, model_config, train_tokens, val_sets = _prepare(config, run_dir, False)

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
        tokenizer,
        train_tokens,
        val_sets,
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
    if config.threads == -1 and run.counters.get("threads") and lone_cpu:
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
    """(config, tokenizer, model config, training tokens, validation token sets by spec) of a run. A resumed run, or
    a fresh one whose `run_dir` rank 0 already made, takes the tokenizer and the resolved configs from its folder;
    otherwise the tokenizer is trained (or loaded) here and seq_len and val_data are resolved."""
    cache_dir = config.cache_dir or None
    source = config.resume or run_dir
    if source:
        saved = read_config(source)
        tokenizer = Tokenizer.load(Path(source) / TOKENIZER_DIR)
        model_config = ModelConfig.from_dict(saved["model"])
        if not config.resume:
            config = TrainConfig.from_dict(saved["train"])
    else:
        tokenizer = train_tokenizer(config)
        # The vocabulary is the tokenizer's, whoever resolved the rest of the model.
        model_config = dataclasses.replace(config.resolved_model(), vocab_size=tokenizer.vocab_size)
        config = config.replace(
            seq_len=model_config.max_position_embeddings if config.seq_len == -1 else config.seq_len,
            val_data=config.val_data or (config.data, "wiki"),
        )
    train_tokens = token_stream(config.data, tokenizer, "train", cache_dir=cache_dir, progress=progress)
    val_sets = {
        spec: token_stream(spec, tokenizer, held_out_split(spec, config.data), cache_dir=cache_dir, progress=progress)
        for spec in config.val_data
    }
    for name, specs in (("data", {config.data: train_tokens}), ("val_data", val_sets)):
        for spec, tokens in specs.items():
            if len(tokens) < config.seq_len + 1:
                raise ConfigError(
                    name, f"{spec} has {len(tokens)} tokens, fewer than seq_len + 1 = {config.seq_len + 1}"
                )
    return config, tokenizer, model_config, train_tokens, val_sets


def train_tokenizer(config: TrainConfig) -> Tokenizer:
    """The tokenizer of a fresh run: GPT-2's, a saved one (a folder), or a BPE trained on config.data."""
    if config.tokenizer == "gpt2":
        return Tokenizer.gpt2()
    if config.tokenizer != "bpe":
        return Tokenizer.load(config.tokenizer)
    # A data spec's validation split is only known in tokens, so its BPE sees every document; the embedded corpus
    # has a document-level split, so its BPE sees the training addresses only.
    docs = load_corpus(config.data, "train") if config.data in CORPORA else iter_documents(config.data)
    return Tokenizer.train(docs, vocab_size=config.vocab_size)


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager | None:
    """bf16 autocast on CUDA ("auto" or "bfloat16"); float32 everywhere else."""
    if device.type == "cuda" and dtype in ("auto", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dtype == "bfloat16":
        raise ConfigError("dtype", f"bfloat16 autocast is for CUDA, but the device is {device}")
    return None


def sample(run: Run) -> str:
    """`sample_tokens` tokens from the start of a new document (the model was trained with EOS between documents),
    on rank 0 ("" elsewhere). Every rank must call it: a sharded model is gathered first, since generation runs
    more than `forward` (the cache's initial memory, `step`), which FSDP only unshards for."""
    config, model, device = run.config, run.model, run.device
    if config.sample_tokens == 0:
        return ""
    if is_sharded(model):
        state = full_model_state(model)
        if state is None:
            return ""
        model = MirasLM(run.model_config).to(device)
        model.load_state_dict(state)
    elif dist.is_initialized() and dist.get_rank() != 0:
        return ""
    generator = torch.Generator(device=device).manual_seed(config.seed)
    prompt = torch.tensor([[run.tokenizer.eos_id]], device=device)
    was_training = model.training
    model.eval()
    ids = model.generate(
        prompt, config.sample_tokens, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, generator=generator
    )
    model.train(was_training)
    return run.tokenizer.decode(ids[0, 1:].tolist())


def tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard", "needs the tensorboard package: pip install 'miras[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
