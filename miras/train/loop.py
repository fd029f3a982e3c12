"""Training: the optimizer and schedule, one step, evaluation, and `train(config)`, which runs a whole run.

Notable features:
- a time budget: with `max_minutes`, the speed of the first steps fixes the step count, so the cosine schedule
  still ends at its floor (the resolved count is written to config.json, making a resumed run follow the same plan);
- exact resumption on CPU: batches depend only on (seed, step), and model, optimizer, scheduler and RNG states are
  restored from the checkpoint;
- evaluation on windows spread evenly over each validation set, next to a unigram baseline on the same tokens;
- data-parallel runs under torchrun (DDP or FSDP2, see distributed.py): `batch_size` is the global batch, each rank
  trains on its slice of it, so N processes compute the same steps as one (up to float rounding). Rank 0 alone
  writes the run folder and logs; its clock decides the time budget for all ranks.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from miras.config import ModelConfig
from miras.data import CORPORA, Tokenizer, TokenBatches, held_out_split, iter_documents, load_corpus, token_stream
from miras.eval.metrics import NLLAccumulator, perplexity
from miras.layers.miras_layer import Gate, use_compiled_steps
from miras.models import MirasLM
from miras.ops.precision import tf32_matmuls
from miras.ops.torch_workarounds import saved_tensors_kept
from miras.progress import progress_bar
from miras.train.checkpoint import load_checkpoint, resumable_checkpoint, save_checkpoint
from miras.train.config import ConfigError, TrainConfig, changed_fields, resume_config
from miras.train.divergence import Diverged, is_finite, skip_line, stop_line, unsaved_line, weights_finite
from miras.train.distributed import Distributed, full_model_state, is_sharded, parallelize
from miras.train.run_lock import RunInUse, RunLock
from miras.train.run_dir import (
    PLOT_FILE,
    TOKENIZER_DIR,
    MetricsLog,
    new_run_dir,
    read_config,
    write_config,
)

# The first steps of a fresh run are timed (see Pacer).
CALIBRATION_STEPS = 8
WARMUP_STEPS = 2  # not counted: they pay one-off costs
PROBE_STEPS = 3  # with thread probing, the last ones run on all cores
SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 50


# ---------------------------------------------------------------------------------------------------------------
# Optimizer and schedule


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on weight matrices only. Norm scales, biases and other 1-D parameters, the gates
    (their bias sets the initial gate value, and decay would pull every gate to squash(0)) and the learned initial
    memory (a state, not a map) are not decayed."""
    exempt = {id(p) for m in model.modules() if isinstance(m, Gate) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # tied weights are listed once
        if not p.requires_grad:
            continue
        if p.ndim < 2 or id(p) in exempt or "memory_init" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """LR multiplier for optimizer step s (0-based): linear warm-up to 1 over `warmup` steps, then a cosine down to
    `min_ratio` at step `total` - 1, the last step a run of `total` steps takes. `total` is None until a time budget has been turned into steps (the multiplier
    stays 1 meanwhile). A callable object rather than a closure so that LambdaLR's state_dict saves its fields."""

    def __init__(self, warmup: int, total: int | None, min_ratio: float) -> None:
        self.warmup, self.total, self.min_ratio = warmup, total, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - 1 - self.warmup))
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------------------------
# Step and evaluation


class _StopRequest:
    """Ctrl-C (SIGINT) while the loop runs: the step in progress finishes, a checkpoint is saved and the run stops
    with KeyboardInterrupt, so at most the step in flight is lost instead of everything since the last save. A second
    Ctrl-C interrupts at once. Only from the main thread (signal handlers cannot be set elsewhere); with several
    processes rank 0's request stops all of them (the loop broadcasts it)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.restore()
        tqdm.write("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    grad_clip: float,
    autocast: contextlib.AbstractContextManager | None = None,
    reduce: Callable[[float], float] | None = None,
) -> tuple[float, float]:
    """One optimizer step over gradient-accumulation micro-batches of (input_ids, labels) [B, T], labels already
    shifted (labels[:, t] follows input_ids[:, t]). Returns (mean loss, gradient norm before clipping), brought to
    the host together: the step's one device-to-host synchronization.

    When either is not finite the update is skipped (weights and AdamW moments unchanged) and the scheduler still
    advances; the caller decides whether the run goes on (divergence.py).
    `model` may be DDP- or FSDP-wrapped; the gradient norm is then the global one, and `reduce` (the trainer passes
    Distributed.mean) turns this rank's loss into the global batch's before the skip is decided, so that every rank
    decides alike."""
    optimizer.zero_grad(set_to_none=True)
    total = None  # the summed losses, float64 on the device: no synchronization per micro-batch
    no_sync = getattr(model, "no_sync", None)  # DDP: all-reduce the gradients in the last backward only
    for i, (input_ids, labels) in enumerate(micro_batches):
        with no_sync() if no_sync and i < len(micro_batches) - 1 else contextlib.nullcontext():
            with autocast or contextlib.nullcontext():
                logits = model(input_ids).logits  # [B, T, V]
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
            (loss / len(micro_batches)).backward()
        total = loss.detach().double() if total is None else total + loss.detach().double()
    clip = grad_clip if grad_clip > 0 else math.inf  # inf: only measure the norm
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor (replicated: every rank holds the global norm)
        grad_norm = grad_norm.full_tensor()
    loss, grad_norm = torch.stack([total / len(micro_batches), grad_norm.double()]).tolist()
    if reduce is not None:
        loss = reduce(loss)
    if math.isfinite(loss) and math.isfinite(grad_norm):
        optimizer.step()
    scheduler.step()
    return loss, grad_norm


def eval_windows(num_tokens: int, seq_len: int, max_tokens: int) -> np.ndarray:
    """Starts of non-overlapping (seq_len + 1)-token windows, spread evenly over the whole set (every era of a
    chronological corpus, not only its beginning). max_tokens -1: every window."""
    slots = (num_tokens - 1) // seq_len
    if slots < 1:
        raise ValueError(f"a validation set of {num_tokens} tokens is shorter than one window of seq_len + 1")
    count = slots if max_tokens == -1 else min(slots, max(1, max_tokens // seq_len))
    return (np.arange(count) * slots // count) * seq_len


def window_tokens(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [len(starts), seq_len] int64, labels shifted by one."""
    rows = torch.from_numpy(tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    starts: np.ndarray,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    distributed: Distributed | None = None,
) -> NLLAccumulator:
    """Mean next-token NLL over the windows at `starts` (each window scored from its own start, no carried state).

    With a multi-process `distributed`, every rank must call this: each scores its contiguous share of the windows
    (batch_size per forward) and every rank gets the all-reduced totals. A rank short of windows runs padding windows
    it does not count, since FSDP needs every rank in every forward."""
    distributed = distributed or Distributed()
    share = -(-len(starts) // distributed.world_size)
    mine = starts[distributed.rank * share : (distributed.rank + 1) * share]
    counted = len(mine)
    mine = np.concatenate([mine, np.full(share - counted, starts[0], dtype=starts.dtype)])
    was_training = model.training
    model.eval()
    nll_sum, num_tokens = 0.0, 0
    for lo in range(0, share, batch_size):
        input_ids, labels = window_tokens(tokens, mine[lo : lo + batch_size], seq_len)
        with autocast or contextlib.nullcontext():
            logits = model(input_ids.to(device)).logits
        keep = min(len(labels), counted - lo)
        if keep > 0:
            nll = F.cross_entropy(logits[:keep].flatten(0, 1).float(), labels[:keep].to(device).flatten(),
                                  reduction="sum")
            nll_sum, num_tokens = nll_sum + nll.item(), num_tokens + labels[:keep].numel()
    model.train(was_training)
    acc = NLLAccumulator()
    acc.add(*distributed.sum([nll_sum, num_tokens]))
    return acc


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(token) of the add-one-smoothed unigram model of the training tokens, [vocab_size] float64."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())


# ---------------------------------------------------------------------------------------------------------------
# Pacing


class Pacer:
    """The wall-clock side of a run: the time budget (training-phase time, evaluations and saves included, summed
    over the sessions of a resumed run), and the calibration of a fresh run's first steps.

    Calibration times CALIBRATION_STEPS steps (the first WARMUP_STEPS pay one-off costs and are not counted):
    - with `probe_cores` > 1, the run starts on one thread, the last PROBE_STEPS run on all cores and the faster
      setting is kept. On shared cores all-core OpenMP can be many times slower than one thread, since every parallel
      op waits for its slowest thread and another process may hold that thread's core; so one thread goes first, and
      the probe stops at the first all-core step that is much slower;
    - with a time budget, it sets how many steps fit, i.e. the cosine schedule's length; afterwards the wall-clock
      time per step since calibration keeps that plan current, so the schedule ends at its floor on time even when
      the machine gets busier.
    The decisions go into config.json and the plan into each checkpoint's scheduler state, so a resumed run follows
    them rather than re-measuring.
    """

    def __init__(self, config: TrainConfig, schedule: WarmupCosine, step: int, elapsed_s: float,
                 probe_cores: int) -> None:
        self.schedule, self.probe_cores = schedule, probe_cores
        if probe_cores > 1:
            torch.set_num_threads(1)
        self.clock_start = time.perf_counter() - elapsed_s
        self.budget = config.max_minutes * 60 if config.max_minutes != -1 else math.inf
        self.fit_budget = config.max_minutes != -1 and (schedule.total is None or not config.resume)
        self.step_cap = config.max_steps  # the caller's limit: a budget plans at most this many steps
        self.eval_every, self.log_every = config.eval_every, config.log_every
        self.calibrate_at = step + CALIBRATION_STEPS if self.fit_budget or probe_cores > 1 else None
        self.eval_seconds = 0.0  # one periodic evaluation, when it was timed before the first step
        self.timed: list[tuple[int, float]] = []  # (threads, seconds) of the calibration steps
        self.planned_from: tuple[int, float] | None = None  # (step, elapsed) at calibration

    def elapsed(self) -> float:
        return time.perf_counter() - self.clock_start

    def out_of_time(self) -> bool:
        return self.elapsed() >= self.budget

    def after_step(self, step: int, seconds: float) -> tuple[dict, str | None]:
        """Record step number `step` (1-based), which took `seconds`; returns (TrainConfig changes, a message)."""
        if self.calibrate_at is None or step > self.calibrate_at:
            if self.planned_from and step % self.log_every == 0 and step - self.planned_from[0] >= self.log_every:
                return self._plan(step, (self.elapsed() - self.planned_from[1]) / (step - self.planned_from[0])), None
            return {}, None
        self.timed.append((torch.get_num_threads(), seconds))
        probing = self.probe_cores > 1 and step >= self.calibrate_at - PROBE_STEPS
        if probing and torch.get_num_threads() == 1:
            torch.set_num_threads(self.probe_cores)
        elif probing and seconds > 2 * _seconds_per_step(self.timed[WARMUP_STEPS:])[1]:
            self.calibrate_at = step  # all cores are much slower: stop probing now
        if step < self.calibrate_at:
            return {}, None
        speed = _seconds_per_step(self.timed[WARMUP_STEPS:])  # threads -> s/step
        threads = min(speed, key=speed.get)
        torch.set_num_threads(threads)
        changes: dict = {}
        message = "speed: " + ", ".join(f"{s:.2f} s/step on {n} thread{'s' * (n > 1)}" for n, s in speed.items())
        if self.probe_cores > 1:
            changes["threads"] = threads
            message += f"; training on {threads} thread{'s' * (threads > 1)}"
        if self.fit_budget:
            amortized_eval = self.eval_seconds / self.eval_every if self.eval_every != -1 else 0.0
            changes.update(self._plan(step, speed[threads] + amortized_eval))
            self.planned_from = (step, self.elapsed())
            message += f"; the time budget fits about {self.schedule.total} steps"
            if self.step_cap != -1 and self.schedule.total < self.step_cap:
                message += f", fewer than max_steps={self.step_cap} (max_minutes={self.budget / 60:g} caps the run)"
        return changes, message

    def _plan(self, step: int, per_step: float) -> dict:
        """Set the schedule's length to the steps that fit in the rest of the budget at `per_step` seconds each."""
        fit = step + int(max(0.0, self.budget - self.elapsed()) // per_step)
        total = max(step, fit if self.step_cap == -1 else min(fit, self.step_cap))
        if total == self.schedule.total:
            return {}
        self.schedule.total = total
        return {"max_steps": total}


# ---------------------------------------------------------------------------------------------------------------
# A run


@dataclass
class TrainResult:
    """What `train` returns. evals: validation set -> {"loss", "ppl", "unigram_ppl", "tokens"}; the first set is
    the primary one."""

    run_dir: Path
    step: int
    tokens: int
    train_loss: float
    tokens_per_second: float
    evals: dict[str, dict] = field(default_factory=dict)
    sample: str = ""
    is_main: bool = True  # rank 0 (or a single process): the one that wrote the run folder and logged

    @property
    def val_ppl(self) -> float:
        return next(iter(self.evals.values()))["ppl"]

    @property
    def unigram_ppl(self) -> float:
        return next(iter(self.evals.values()))["unigram_ppl"]


def train(config: TrainConfig) -> TrainResult:
    """Run (or, with config.resume, continue) a training run; see TrainConfig for the knobs and run_dir.py for
    what the run folder holds.

    Under torchrun (WORLD_SIZE > 1), or inside a process group the caller initialized, every process calls this and
    they train one model together (see distributed.py); all return the same result, but only rank 0's has the
    sample and `is_main` set."""
    if config.resume:
        config = resume_config(config.resume, **changed_fields(config))
        resumable_checkpoint(config.resume)  # fail before building anything when there is nothing to resume
    distributed = Distributed.start(config.device)
    try:
        if config.tf32 and distributed.device.type != "cuda":  # checked before the process-wide flag is set
            raise ConfigError("tf32", f"TF32 matmuls are for CUDA GPUs (Ampere or newer), but the device is "
                                      f"{distributed.device}")
        # saved_tensors_kept: torch.compile gives wrong gradients with donated buffers (ops/torch_workarounds.py);
        # the model compiles on its first call, inside the run
        with tf32_matmuls(config.tf32), saved_tensors_kept() if config.compile else contextlib.nullcontext():
            return _train(config, distributed)
    finally:
        distributed.close()


def _train(config: TrainConfig, distributed: Distributed) -> TrainResult:
    with contextlib.ExitStack() as locks:  # the run folder's lock (run_lock.py): rank 0 takes it in _run
        return _run(config, distributed, locks)


def _run(config: TrainConfig, distributed: Distributed, locks: contextlib.ExitStack) -> TrainResult:
    if config.batch_size % distributed.world_size:
        raise ConfigError("batch_size", f"the global batch of {config.batch_size} sequences does not split evenly "
                                        f"over {distributed.world_size} processes")
    device, main = distributed.device, distributed.is_main
    local_batch = config.batch_size // distributed.world_size
    cores = len(os.sched_getaffinity(0))
    if device.type == "cpu":  # the processes of a node share its cores
        torch.set_num_threads(config.threads if config.threads != -1 else max(1, cores // distributed.local_world_size))
    autocast = _autocast(device, config.dtype)
    log = tqdm.write if main else _quiet  # tqdm.write prints without breaking the progress bar

    # -- tokenizer, data and run folder. Rank 0 goes first: it trains the tokenizer, fills the token cache and
    # creates the folder only once the data checked out (bad data leaves nothing behind); the other ranks then read
    # the tokenizer and the resolved config from the folder and the tokens from the cache.
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
                run_dir = new_run_dir(config.out_dir, config.preset, locks, log)
            except ValueError as e:
                raise ConfigError("out_dir", str(e)) from None
            config = config.replace(out_dir=str(run_dir.absolute()))
            tokenizer.save(run_dir / TOKENIZER_DIR)
            write_config(run_dir, config.to_dict(), model_config.to_dict())
    run_dir = Path(distributed.broadcast(str(run_dir), setup=True))
    if not main:
        config, tokenizer, model_config, train_tokens, val_sets = _prepare(config, run_dir, False)
    primary = config.val_data[0]

    # -- model and optimizer
    torch.manual_seed(config.seed)  # right before the model: every rank builds the same initial weights
    model = MirasLM(model_config).to(device)
    trained = parallelize(model, config.parallel, distributed)  # FSDP shards `model` in place; DDP wraps it
    if config.compile:  # the memory ops run with compiled chunk steps, outside the model's graph
        use_compiled_steps(model)
    forward_model = torch.compile(trained) if config.compile else trained
    optimizer = torch.optim.AdamW(  # after parallelize: under FSDP the parameters are now the shards
        param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas,
        fused=True if device.type == "cuda" else None,
    )
    schedule = WarmupCosine(config.warmup_steps, None if config.max_steps == -1 else config.max_steps,
                            config.min_lr_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    metrics = MetricsLog(run_dir) if main else None
    history: list[dict] = []
    if config.resume:
        counters = load_checkpoint(run_dir, model, optimizer, scheduler)
        if config.max_steps not in (-1, schedule.total):
            # `--resume RUN --max-steps N` with a new N: the checkpoint's schedule would stop the run at its old
            # length, so the cosine is re-planned to end at N (the learning rate continues on the longer curve).
            schedule.total = config.max_steps
            for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base_lr * schedule(counters["step"])
        if main:
            history = metrics.truncate_after(counters["step"])
            # The flags a resume may change (RESUMABLE) go into config.json: it says what the run did.
            write_config(run_dir, config.to_dict(), model_config.to_dict())
            done = config.max_steps != -1 and counters["step"] >= config.max_steps
            log(f"resuming {run_dir} at step {counters['step']}" + (
                f": max_steps={config.max_steps} is reached, so only the final evaluation runs (give a larger "
                "--max-steps to train on)" if done else ""))
    else:
        counters = {"step": 0, "tokens": 0, "elapsed_s": 0.0}
    writer = _tensorboard(run_dir) if config.tensorboard and main else None
    log(f"run folder: {run_dir}")
    log(f"model: {config.preset} {config.size}: {model.num_parameters() / 1e6:.2f}M parameters "
        f"({model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M without embeddings), hidden "
        f"{model_config.hidden_size}, {model_config.num_hidden_layers} layers, {model_config.num_heads} heads, "
        f"chunk {model_config.chunk_size}; device {device}, {torch.get_num_threads()} threads")
    if distributed.enabled:
        log(f"distributed: {distributed.world_size} processes ({config.parallel}), {local_batch} sequences of each "
            f"batch per process")
    log(f"data: {config.data} train {len(train_tokens):,} tokens; validation "
        + ", ".join(f"{spec} {len(t):,}" for spec, t in val_sets.items())
        + f"; tokenizer {tokenizer.kind}, vocab {tokenizer.vocab_size}")
    log(f"optimization: {config.batch_size} x {config.seq_len} x {config.grad_accum} = {config.tokens_per_step:,} "
        f"tokens/step, lr {config.lr:g} (warm-up {config.warmup_steps}, cosine to {config.lr * config.min_lr_ratio:g}),"
        f" weight decay {config.weight_decay:g}")

    # -- the loop
    batches = TokenBatches(train_tokens, config.batch_size, config.seq_len, config.seed)
    rows = slice(distributed.rank * local_batch, (distributed.rank + 1) * local_batch)  # this rank's share
    period_starts = eval_windows(len(val_sets[primary]), config.seq_len,
                                 config.eval_batches * config.batch_size * config.seq_len)
    train_points = [(r["step"], r["loss"]) for r in history if r["event"] == "train"]
    val_points = [(r["step"], r["val_loss"]) for r in history if r["event"] == "eval"]
    step = counters["step"]
    # Thread probing is for a process alone on its cores; processes sharing a node split the cores instead.
    probe = device.type == "cpu" and config.threads == -1 and not config.resume and not distributed.enabled
    pacer = Pacer(config, schedule, step, counters["elapsed_s"], cores if probe else 0)
    window_loss, window_steps, window_time = counters.get("window", (0.0, 0, 0.0))
    session_tokens, session_time = 0, 0.0
    last_saved = step if config.resume else -1
    # Non-finite steps (divergence.py): how many this run skipped, and the checkpoint a stop leaves as the last good.
    skipped = counters.get("skipped", 0)
    last_good = resumable_checkpoint(run_dir) if config.resume else None
    loss, logged_grad_norm = float("nan"), float("nan")

    def save(seconds: float) -> None:
        """Checkpoint the weights after `step`: only finite ones (divergence.py)."""
        nonlocal last_saved, last_good
        if not weights_finite(model, distributed):
            raise Diverged(unsaved_line(step, loss, config, last_good), main)
        path = save_checkpoint(run_dir, model, optimizer, scheduler, _counters(
            step, config, seconds, (window_loss, window_steps, window_time), skipped))
        last_saved, last_good = step, path

    def periodic_eval() -> float:
        """Evaluates, logs and plots; returns the seconds the evaluation itself took."""
        t = time.perf_counter()
        acc = evaluate(model, val_sets[primary], period_starts, config.seq_len, local_batch, device, autocast,
                       distributed)
        seconds = time.perf_counter() - t
        if main:
            metrics.append("eval", step=step, tokens=step * config.tokens_per_step, val_loss=acc.mean_nll,
                           val_ppl=acc.perplexity)
            val_points.append((step, acc.mean_nll))
            _plot(run_dir, train_points, val_points)
            if writer:
                writer.add_scalar("val/loss", acc.mean_nll, step)
        log(f"step {step}: val loss {acc.mean_nll:.4f}, ppl {acc.perplexity:.1f}")
        return seconds

    if step == 0 and config.eval_every != -1:
        pacer.eval_seconds = periodic_eval()
    bar = progress_bar(total=schedule.total, initial=step, desc="train", unit="step", disable=not (config.progress and main),
               dynamic_ncols=True)
    stop = _StopRequest()  # Ctrl-C: finish the step, save, stop (README: Interrupting a run)
    try:
        while True:
            # Every rank must take the same steps, or one waits forever in a collective the others never join: rank 0's
            # clock and plan decide for all.
            go = (schedule.total is None or step < schedule.total) and not pacer.out_of_time() and not stop.requested
            go, schedule.total, interrupted = distributed.broadcast((go, schedule.total, stop.requested))
            if not go:
                break
            lr = optimizer.param_groups[0]["lr"]
            micro = [batches.batch(step * config.grad_accum + i) for i in range(config.grad_accum)]
            micro = [(x[rows].to(device), y[rows].to(device)) for x, y in micro]
            t = time.perf_counter()
            # distributed.mean: the global batch's loss (every rank's share has as many tokens), so that every rank
            # skips or stops alike
            loss, grad_norm = train_step(forward_model, optimizer, scheduler, micro, config.grad_clip, autocast,
                                         distributed.mean)
            dt = time.perf_counter() - t
            step += 1
            session_tokens, session_time = session_tokens + config.tokens_per_step, session_time + dt
            if is_finite(loss, grad_norm):
                window_loss, window_steps, window_time = window_loss + loss, window_steps + 1, window_time + dt
                logged_grad_norm = grad_norm
            elif skipped < config.max_skipped_steps:  # the update was skipped; the run goes on
                skipped += 1
                log(skip_line(step, loss, grad_norm, skipped, config, last_good))
            else:
                raise Diverged(stop_line(step, loss, grad_norm, config, last_good), main)
            bar.update()
            if main:
                changes, message = pacer.after_step(step, dt)
                if changes:
                    config = config.replace(**changes)
                    write_config(run_dir, config.to_dict(), model_config.to_dict())
                    bar.total = schedule.total
                    bar.refresh()
                if message:
                    log(message)

            if window_steps and (step % config.log_every == 0 or step == schedule.total):
                tok_s = window_steps * config.tokens_per_step / window_time
                mean_loss = window_loss / window_steps
                if main:
                    metrics.append("train", step=step, tokens=step * config.tokens_per_step, loss=mean_loss, lr=lr,
                                   grad_norm=logged_grad_norm, tok_s=tok_s, elapsed_s=pacer.elapsed())
                    train_points.append((step, mean_loss))
                    bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                    if writer:
                        writer.add_scalar("train/loss", mean_loss, step)
                        writer.add_scalar("train/lr", lr, step)
                        writer.add_scalar("train/tok_s", tok_s, step)
                window_loss, window_steps, window_time = 0.0, 0, 0.0
            if config.eval_every != -1 and step % config.eval_every == 0:
                periodic_eval()
            if config.save_every != -1 and step % config.save_every == 0:
                save(pacer.elapsed())
    finally:
        stop.restore()
        bar.close()
    train_seconds = pacer.elapsed()
    if step != last_saved:
        save(train_seconds)
    if interrupted:
        log(f"interrupted at step {step}: checkpoint saved; continue with: miras train --resume {run_dir}")
        distributed.barrier()
        raise KeyboardInterrupt

    # -- final evaluation, unigram baseline and a sample
    log_probs = unigram_log_probs(train_tokens, tokenizer.vocab_size)
    evals = {}
    for spec, tokens in val_sets.items():
        starts = eval_windows(len(tokens), config.seq_len, config.final_eval_tokens)
        acc = evaluate(model, tokens, starts, config.seq_len, local_batch, device, autocast, distributed)
        _, labels = window_tokens(tokens, starts, config.seq_len)
        unigram_nll = -float(log_probs[labels.numpy()].sum())
        evals[spec] = {"loss": acc.mean_nll, "ppl": acc.perplexity, "tokens": acc.num_tokens,
                       "unigram_ppl": perplexity(unigram_nll, labels.numel())}
        log(f"validation {spec} ({acc.num_tokens:,} tokens): loss {acc.mean_nll:.4f}, perplexity "
            f"{acc.perplexity:.1f}; unigram baseline perplexity {evals[spec]['unigram_ppl']:.1f}")
    sample = _sample(model, model_config, tokenizer, config, device)
    tok_s = session_tokens / session_time if session_time else 0.0
    if main:
        metrics.append("final", step=step, tokens=step * config.tokens_per_step, val_loss=evals[primary]["loss"],
                       val_ppl=evals[primary]["ppl"], unigram_ppl=evals[primary]["unigram_ppl"], evals=evals,
                       tok_s=tok_s, elapsed_s=train_seconds, sample=sample)
        _plot(run_dir, train_points, val_points)
    if writer:
        writer.close()
    log(f"trained {step} steps ({step * config.tokens_per_step:,} tokens) at {tok_s:,.0f} tokens/s")
    if sample:
        log(f"sample: {sample!r}")
    log(f"run folder: {run_dir}")
    distributed.barrier()  # the run folder is complete before any rank returns
    return TrainResult(run_dir, step, step * config.tokens_per_step, loss, tok_s, evals, sample, main)


def _prepare(config: TrainConfig, run_dir: Path | None, progress: bool) -> tuple:
    """(config, tokenizer, model config, training tokens, validation token sets by spec) of a run. A resumed run, or
    a fresh one whose `run_dir` rank 0 already made, takes the tokenizer and the resolved configs from its folder;
    otherwise the tokenizer is trained and seq_len and val_data are resolved here."""
    cache_dir = config.cache_dir or None
    source = config.resume or run_dir
    if source:
        saved = read_config(source)
        tokenizer = Tokenizer.load(Path(source) / TOKENIZER_DIR)
        model_config = ModelConfig.from_dict(saved["model"])
        if not config.resume:
            config = TrainConfig.from_dict(saved["train"])
    else:
        tokenizer = _tokenizer(config)
        model_config = ModelConfig.from_size(
            config.size, preset=config.preset, vocab_size=tokenizer.vocab_size, **config.model_overrides()
        )
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
                raise ConfigError(name, f"{spec} has {len(tokens)} tokens, fewer than seq_len + 1 = "
                                        f"{config.seq_len + 1}")
    return config, tokenizer, model_config, train_tokens, val_sets


def _quiet(message: str) -> None:
    """The log of ranks other than 0."""


def _seconds_per_step(timed: list[tuple[int, float]]) -> dict[int, float]:
    """Mean seconds per step for each thread count in (threads, seconds) pairs."""
    by_threads: dict[int, list[float]] = {}
    for threads, seconds in timed:
        by_threads.setdefault(threads, []).append(seconds)
    return {threads: sum(s) / len(s) for threads, s in by_threads.items()}


def _counters(step: int, config: TrainConfig, elapsed: float, window: tuple[float, int, float], skipped: int) -> dict:
    """What a checkpoint records of the run's progress; `window` (loss sum, trained steps, seconds since the last
    training record) lets a resumed run log the same averages as an uninterrupted one; `skipped`: the non-finite steps
    skipped so far (divergence.py)."""
    return {"step": step, "tokens": step * config.tokens_per_step, "elapsed_s": elapsed, "window": list(window),
            "skipped": skipped}


def _tokenizer(config: TrainConfig) -> Tokenizer:
    if config.tokenizer == "gpt2":
        return Tokenizer.gpt2()
    # A data spec's validation split is only known in tokens, so its BPE sees every document; the embedded corpus
    # has a document-level split, so its BPE sees the training addresses only.
    docs = load_corpus(config.data, "train") if config.data in CORPORA else iter_documents(config.data)
    return Tokenizer.train(docs, vocab_size=config.vocab_size)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager | None:
    """bf16 autocast on CUDA ("auto" or "bfloat16"); float32 everywhere else."""
    if device.type == "cuda" and dtype in ("auto", "bfloat16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if dtype == "bfloat16":
        raise ConfigError("dtype", f"bfloat16 autocast is for CUDA, but the device is {device}")
    return None


def _sample(model: MirasLM, model_config: ModelConfig, tokenizer: Tokenizer, config: TrainConfig,
            device: torch.device) -> str:
    """`sample_tokens` tokens from the start of a new document (the model was trained with EOS between documents),
    on rank 0 ("" elsewhere). Every rank must call it: a sharded model is gathered first, since generation runs
    more than `forward` (the cache's initial memory, `step`), which FSDP only unshards for."""
    if config.sample_tokens == 0:
        return ""
    if is_sharded(model):
        state = full_model_state(model)
        if state is None:
            return ""
        model = MirasLM(model_config).to(device)
        model.load_state_dict(state)
    elif dist.is_initialized() and dist.get_rank() != 0:
        return ""
    generator = torch.Generator(device=device).manual_seed(config.seed)
    prompt = torch.tensor([[tokenizer.eos_id]], device=device)
    was_training = model.training
    model.eval()
    ids = model.generate(prompt, config.sample_tokens, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K,
                         generator=generator)
    model.train(was_training)
    return tokenizer.decode(ids[0, 1:].tolist())


def _plot(run_dir: Path, train_points: list, val_points: list) -> None:
    from miras.eval.plots import plot_loss_curves  # loads matplotlib

    series = {name: points for name, points in (("train", train_points), ("val", val_points)) if points}
    if series:
        plot_loss_curves(series, run_dir / PLOT_FILE, title=f"{run_dir.name}: loss")


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("tensorboard", "needs the tensorboard package: pip install 'miras[tensorboard]'") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
