"""`train(config)`: one run, top to bottom. setup.py builds what the run is made of (`Run`, parts.py); this file
steps it, with everything that changes as it goes in one `RunState`.

Notable features:
- exact resumption on CPU: batches depend only on (seed, step), and model, optimizer, scheduler and RNG states are
  restored from the checkpoint;
- a time budget and a thread probe, both opt-in (`max_minutes`, `threads` 0; pace.py): the first steps' speed fixes
  the step count, so the cosine ends at its floor; the plan is kept in each checkpoint, for a resumed run to follow;
- one loop for every task (parts.Task): language modelling (lm_task.py: evaluation on windows spread evenly over
  each validation set, next to a unigram baseline) and MQAR (mqar_task.py: query accuracy on a held-out test split);
- data-parallel runs under torchrun (DDP or FSDP2, see distributed.py): `batch_size` is the global batch, each rank
  trains on its slice of it, so N processes compute the same steps as one (up to float rounding). Rank 0 alone
  writes the run folder and logs; its clock decides the time budget for all ranks.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from miras.ops.precision import tf32_matmuls
from miras.ops.torch_workarounds import saved_tensors_kept
from miras.progress import progress_bar
from miras.run.checkpoint import resumable_checkpoint
from miras.run.folder import PLOT_FILE
from miras.train.checkpoint import save_checkpoint
from miras.train.config import ConfigError, TrainConfig, changed_fields, resume_config
from miras.train.distributed import Distributed
from miras.train.divergence import Diverged, is_finite, skip_line, stop_line, unsaved_line, weights_finite
from miras.train.interrupt import StopRequest
from miras.train.pace import Pacer
from miras.train.parts import Run
from miras.train.setup import describe, start_run, tensorboard
from miras.train.step import train_step


@dataclass
class TrainResult:
    """What `train` returns. evals: validation set -> {"loss", "ppl", "unigram_ppl", "tokens"}, the first set the
    primary one; MQAR: {"mqar": {"loss", "accuracy", "examples"}}."""

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

    @property
    def accuracy(self) -> float:  # MQAR's
        return next(iter(self.evals.values()))["accuracy"]


@dataclass
class RunState:
    """What the loop changes as it goes. A checkpoint keeps `counters()` of it, so a resumed run logs the same
    averages as an uninterrupted one: the training-loss window (loss sum, trained steps, seconds since the last
    record), the non-finite steps skipped so far (divergence.py) and the thread count the pacer chose."""

    step: int
    window: list = field(default_factory=lambda: [0.0, 0, 0.0])
    skipped: int = 0
    threads: int | None = None
    session_tokens: int = 0
    session_time: float = 0.0
    last_saved: int = -1
    last_good: Path | None = None  # the checkpoint a stop leaves as the last good one
    loss: float = math.nan
    grad_norm: float = math.nan  # of the last finite step
    train_points: list = field(default_factory=list)  # (step, loss) for the plot
    val_points: list = field(default_factory=list)

    @classmethod
    def of(cls, run: Run) -> "RunState":
        c, resumed = run.counters, bool(run.config.resume)
        return cls(
            step=c["step"],
            window=list(c.get("window", (0.0, 0, 0.0))),
            skipped=c.get("skipped", 0),
            threads=c.get("threads"),
            last_saved=c["step"] if resumed else -1,
            last_good=resumable_checkpoint(run.run_dir) if resumed else None,
            train_points=[(r["step"], r["loss"]) for r in run.history if r["event"] == "train"],
            val_points=[(r["step"], r["val_loss"]) for r in run.history if r["event"] == "eval"],
        )

    def counters(self, tokens_per_step: int, elapsed: float) -> dict:
        counters = {
            "step": self.step,
            "tokens": self.step * tokens_per_step,
            "elapsed_s": elapsed,
            "window": list(self.window),
            "skipped": self.skipped,
        }
        return counters if self.threads is None else {**counters, "threads": self.threads}


def train(config: TrainConfig, *, log: Callable[[str], None] | None = None) -> TrainResult:
    """Run (or, with config.resume, continue) a training run; see TrainConfig for the knobs and miras/run/folder.py
    for what the run folder holds.

    Under torchrun (WORLD_SIZE > 1), or inside a process group the caller initialized, every process calls this and
    they train one model together (see distributed.py); all return the same result, but only rank 0's has the
    sample and `is_main` set. log: where rank 0's lines go (default: printed above the progress bar)."""
    if config.resume:
        config = resume_config(config.resume, **changed_fields(config))
        resumable_checkpoint(config.resume)  # fail before building anything when there is nothing to resume
    distributed = Distributed.start(config.device)
    try:
        if config.tf32 and distributed.device.type != "cuda":  # checked before the process-wide flag is set
            raise ConfigError(
                "tf32", f"TF32 matmuls are for CUDA GPUs (Ampere or newer), but the device is {distributed.device}"
            )
        # saved_tensors_kept: torch.compile gives wrong gradients with donated buffers (ops/torch_workarounds.py);
        # the model compiles on its first call, inside the run
        with tf32_matmuls(config.tf32), saved_tensors_kept() if config.compile else contextlib.nullcontext():
            with contextlib.ExitStack() as locks:  # the run folder's lock (miras/run/lock.py): rank 0 takes it
                return _run(start_run(config, distributed, locks, log))
    finally:
        distributed.close()


def _run(run: Run) -> TrainResult:
    config, distributed, log = run.config, run.distributed, run.log
    state = RunState.of(run)
    writer = tensorboard(run.run_dir) if config.tensorboard and run.main else None
    describe(run)
    # Thread probing (opt-in) is for a process alone on its cores; processes sharing a node split the cores instead.
    probe = run.device.type == "cpu" and config.threads == 0 and not config.resume and not distributed.enabled
    pacer = Pacer(
        config, run.schedule, state.step, run.counters["elapsed_s"], len(os.sched_getaffinity(0)) if probe else 0
    )
    rows = slice(distributed.rank * run.local_batch, (distributed.rank + 1) * run.local_batch)  # this rank's share
    if state.step == 0 and config.eval_every != -1:
        pacer.eval_seconds = _periodic_eval(run, state, writer)
    bar = progress_bar(
        total=run.schedule.total,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not (config.progress and run.main),
        dynamic_ncols=True,
    )
    stop = StopRequest()  # Ctrl-C: finish the step, save, stop (README: Interrupting a run)
    try:
        while True:
            # Every rank must take the same steps, or one waits forever in a collective the others never join:
            # rank 0's clock and plan decide for all.
            go = (
                (run.schedule.total is None or state.step < run.schedule.total)
                and not pacer.out_of_time()
                and not stop.requested
            )
            go, run.schedule.total, interrupted = distributed.broadcast((go, run.schedule.total, stop.requested))
            if not go:
                break
            lr = run.optimizer.param_groups[0]["lr"]
            micro = [run.task.batch(state.step * config.grad_accum + i) for i in range(config.grad_accum)]
            micro = [(x[rows].to(run.device), y[rows].to(run.device)) for x, y in micro]
            t = time.perf_counter()
            # distributed.mean: the global batch's loss, so that every rank skips or stops alike
            loss, grad_norm = train_step(
                run.forward_model, run.optimizer, run.scheduler, micro, config.grad_clip, run.autocast, distributed.mean
            )
            dt = time.perf_counter() - t
            state.step, state.loss = state.step + 1, loss
            state.session_tokens += config.tokens_per_step
            state.session_time += dt
            if is_finite(loss, grad_norm):
                state.window = [state.window[0] + loss, state.window[1] + 1, state.window[2] + dt]
                state.grad_norm = grad_norm
            elif state.skipped < config.max_skipped_steps:  # the update was skipped; the run goes on
                state.skipped += 1
                log(skip_line(state.step, loss, grad_norm, state.skipped, config, state.last_good))
            else:
                raise Diverged(stop_line(state.step, loss, grad_norm, config, state.last_good), run.main)
            bar.update()
            if run.main:
                decided, message = pacer.after_step(state.step, dt)
                if decided:  # the run's config stays as given; the log says what the pacer chose
                    state.threads = decided.get("threads", state.threads)
                    run.metrics.append("pace", step=state.step, **decided)
                    bar.total = run.schedule.total
                    bar.refresh()
                if message:
                    log(message)
            if state.window[1] and (state.step % config.log_every == 0 or state.step == run.schedule.total):
                _log_window(run, state, lr, pacer.elapsed(), bar, writer)
            if config.eval_every != -1 and state.step % config.eval_every == 0:
                _periodic_eval(run, state, writer)
            if config.save_every != -1 and state.step % config.save_every == 0:
                _save(run, state, pacer.elapsed())
    finally:
        stop.restore()
        bar.close()
    train_seconds = pacer.elapsed()
    if state.step != state.last_saved:
        _save(run, state, train_seconds)
    if interrupted:
        log(f"interrupted at step {state.step}: checkpoint saved; continue with: miras train --resume {run.run_dir}")
        distributed.barrier()
        raise KeyboardInterrupt
    return _finish(run, state, train_seconds, writer)


def _periodic_eval(run: Run, state: RunState, writer) -> float:
    """Evaluates (the task's periodic evaluation), logs and plots; returns the seconds the evaluation took."""
    t = time.perf_counter()
    fields, line = run.task.periodic_eval(run, state.step)
    seconds = time.perf_counter() - t
    if run.main:
        run.metrics.append("eval", step=state.step, tokens=state.step * run.config.tokens_per_step, **fields)
        state.val_points.append((state.step, fields["val_loss"]))
        _plot(run.run_dir, state)
        if writer:
            for name in ("val_loss", "accuracy"):
                if name in fields:
                    writer.add_scalar(f"val/{name.removeprefix('val_')}", fields[name], state.step)
    run.log(f"step {state.step}: {line}")
    return seconds


def _log_window(run: Run, state: RunState, lr: float, elapsed: float, bar, writer) -> None:
    """A "train" record: the mean loss and tokens/s of the steps since the last one."""
    loss_sum, steps, seconds = state.window
    tok_s, mean_loss = steps * run.config.tokens_per_step / seconds, loss_sum / steps
    if run.main:
        run.metrics.append(
            "train",
            step=state.step,
            tokens=state.step * run.config.tokens_per_step,
            loss=mean_loss,
            lr=lr,
            grad_norm=state.grad_norm,
            tok_s=tok_s,
            elapsed_s=elapsed,
        )
        state.train_points.append((state.step, mean_loss))
        bar.set_postfix(loss=f"{mean_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
        if writer:
            for name, value in (("train/loss", mean_loss), ("train/lr", lr), ("train/tok_s", tok_s)):
                writer.add_scalar(name, value, state.step)
    state.window = [0.0, 0, 0.0]


def _save(run: Run, state: RunState, elapsed: float) -> None:
    """Checkpoint the weights after `state.step`: only finite ones (divergence.py)."""
    if not weights_finite(run.model, run.distributed):
        raise Diverged(unsaved_line(state.step, state.loss, run.config, state.last_good), run.main)
    state.last_good = save_checkpoint(
        run.run_dir, run.model, run.optimizer, run.scheduler, state.counters(run.config.tokens_per_step, elapsed)
    )
    state.last_saved = state.step


def _finish(run: Run, state: RunState, train_seconds: float, writer) -> TrainResult:
    """The task's final evaluation (text: every validation set next to the unigram baseline, a sample), the "final"
    record."""
    config, step = run.config, state.step
    evals, fields, lines = run.task.final_eval(run, step)
    for line in lines:
        run.log(line)
    tok_s = state.session_tokens / state.session_time if state.session_time else 0.0
    if run.main:
        run.metrics.append(
            "final", step=step, tokens=step * config.tokens_per_step, **fields, tok_s=tok_s, elapsed_s=train_seconds
        )
        _plot(run.run_dir, state)
    if writer:
        writer.close()
    run.log(f"trained {step} steps ({step * config.tokens_per_step:,} tokens) at {tok_s:,.0f} tokens/s")
    text = fields.get("sample", "")
    if text:
        run.log(f"sample: {text!r}")
    run.log(f"run folder: {run.run_dir}")
    run.distributed.barrier()  # the run folder is complete before any rank returns
    return TrainResult(run.run_dir, step, step * config.tokens_per_step, state.loss, tok_s, evals, text, run.main)


def _plot(run_dir: Path, state: RunState) -> None:
    from miras.plots import plot_loss_curves  # loads matplotlib, which a run without plots never needs

    series = {name: points for name, points in (("train", state.train_points), ("val", state.val_points)) if points}
    if series:
        plot_loss_curves(series, run_dir / PLOT_FILE, title=f"{run_dir.name}: loss")
