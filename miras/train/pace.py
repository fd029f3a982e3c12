"""The time budget and the thread probe of a run: the wall-clock side of training, opt-in.

- `max_minutes` (TrainConfig; the `miras train` command's default with neither --max-steps nor --max-minutes is 8):
  the speed of a fresh run's first steps sets how many steps fit, i.e. the cosine schedule's length, and the measured
  time per step keeps that plan current;
- `threads` 0 on a CPU, in a single fresh process (the `miras train` command's default; the library's is -1, all
  cores without a probe): the first steps run on one thread and then on all cores, and the faster setting is kept.

The pacer decides; it does not write the run's config. Its decisions go to the run log and metrics.jsonl (a "pace"
event), the plan into each checkpoint's scheduler state and the thread count into its counters, so a resumed run
follows them rather than re-measuring.
"""

from __future__ import annotations

import math
import time

import torch

from miras.train.config import TrainConfig
from miras.train.optim import WarmupCosine

# The first steps of a fresh run are timed.
CALIBRATION_STEPS = 8
WARMUP_STEPS = 2  # not counted: they pay one-off costs
PROBE_STEPS = 3  # with thread probing, the last ones run on all cores


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
    `after_step` returns what it decided (threads, max_steps) for the run log and metrics.jsonl; the TrainConfig is
    left as it was given.
    """

    def __init__(
        self, config: TrainConfig, schedule: WarmupCosine, step: int, elapsed_s: float, probe_cores: int
    ) -> None:
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
        """Record step number `step` (1-based), which took `seconds`; returns (what was decided: "threads" and/or
        "max_steps", a message for the log)."""
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


def _seconds_per_step(timed: list[tuple[int, float]]) -> dict[int, float]:
    """Mean seconds per step for each thread count in (threads, seconds) pairs."""
    by_threads: dict[int, list[float]] = {}
    for threads, seconds in timed:
        by_threads.setdefault(threads, []).append(seconds)
    return {threads: sum(s) / len(s) for threads, s in by_threads.items()}
