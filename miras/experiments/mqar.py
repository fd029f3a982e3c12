"""MQAR (multi-query associative recall) experiments: training runs and sweeps, with zoology's protocol.

zoology (HazyResearch) trains each model from scratch on MQAR examples with AdamW for a fixed budget, evaluates it on
a disjoint test split, and scores the argmax prediction at the query positions only (every other label is
IGNORE_INDEX). Its figure plots test accuracy against model width, one line per model and one panel per
(sequence length, number of key-value pairs), taking for each point the best accuracy over a small learning-rate
sweep. `train_mqar` is one such run, trained by `miras.train.train` (TrainConfig data "mqar", the trainer's MQAR task
in miras/train/mqar_task.py) into a run folder of its own; `mqar_sweep` is the grid, over seeds too;
`write_mqar_report` writes the table (per point: the median over seeds at the learning rate with the best median,
among the rates with the most seeds finished, and the seeds' range), the JSON and the figures (accuracy against
width, and learning curves).

Differences from zoology, all for CPU budgets: the defaults are far smaller (zoology trains 2-layer models of width
64-256 for 32 epochs of 20k-100k examples at batch 256, vocabulary 8192); the step budget is counted in optimizer
steps rather than epochs; the schedule is the trainer's warm-up + cosine. Models are `MirasLM`s (a short causal conv
is part of every Miras layer, as zoology's BaseConv is part of its models; attention layers have none).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import multiprocessing
import os
import shutil
import statistics
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from miras import presets
from miras.checks import check_int
from miras.config import TRANSFORMER, ModelConfig
from miras.data.synthetic import mqar_splits
from miras.experiments.results import ResultsStore
from miras.io_atomic import write_text_atomic
from miras.models import MirasLM, state_size
from miras.presets import PRESETS
from miras.run.checkpoint import CheckpointError, resumable_checkpoint
from miras.run.folder import CONFIG_FILE, MetricsLog
from miras.train import TrainConfig, train
from miras.train.config import MQAR, ConfigError, resume_config

# Named variants a sweep can run beside the presets: (preset, spec changes, ModelConfig changes). Each is a design
# the issue tracker asked to compare on recall (issue 23), spelled out here rather than hidden in a flag.
# - gated_deltanet_per_chunk16: gated DeltaNet with per-chunk gradients at chunk 16 (every token of a chunk takes its
#   gradient at the chunk's starting memory; inside a chunk it is gated linear attention), the approximation
#   `MemorySpec.gradients` names; the preset itself is the exact delta rule.
# - <preset>_chunk16: a per-chunk preset at chunk 16 instead of 64, so that a 32-token sequence has two chunks and the
#   memory corrects its error once inside the sequence (at chunk 64 every gradient is taken at the initial memory).
# - <preset>_eta_init0.5: η starting at half its maximum instead of a tenth (`ModelConfig.eta_init`): the op-level
#   capacity check finds the MLP memories barely recall one write at a tenth (eval README).
# - moneta_p2, moneta_q2, yaad_l2: one of the paper's choices for Moneta / Yaad undone: the lp bias at p = 2 (the l2
#   bias; η_max's 1/p absorbs lp's factor p), the lq retention at q = 2, the l2 bias instead of Huber (Yaad becomes
#   Titans without momentum), each varied alone as issue 23 asks of the lp / lq exponents.
# - yaad_delta1: Yaad with Huber's δ starting at 1 (`ModelConfig.delta_init`), the layer's start before issue 23
#   changed it to 2·√head_dim (16 at head dim 64, above the error's norm at initialization, about 11): every token
#   then starts outside the δ-ball, on the l1 side, and the preset learned no recall.
# - yaad_delta1_huber_norm, yaad_delta1_huber_coordinate: yaad_delta1 with the paper's other two Huber forms
#   (`MemorySpec.huber_form`), both continuous at the threshold, where Yaad's mixture jumps from the l2 write to a √V
#   times larger l1 one: the two suspects of the δ-1 start, tested apart (experiments README, "Recall", section 5).
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "gated_deltanet_per_chunk16": ("gated_deltanet", {"gradients": "per_chunk"}, {"chunk_size": 16}),
    **{f"{p}_chunk16": (p, {}, {"chunk_size": 16}) for p in ("moneta", "yaad", "memora")},
    **{f"{p}_eta_init0.5": (p, {}, {"eta_init": 0.5}) for p in ("moneta", "yaad", "memora", "gated_deltanet")},
    "moneta_p2": ("moneta", {"p": 2.0}, {}),
    "moneta_q2": ("moneta", {"q": 2.0}, {}),
    "yaad_l2": ("yaad", {"bias": "l2"}, {}),
    "yaad_delta1": ("yaad", {}, {"delta_init": 1.0}),
    **{f"yaad_delta1_huber_{f}": ("yaad", {"huber_form": f}, {"delta_init": 1.0}) for f in ("norm", "coordinate")},
}
MODELS = (TRANSFORMER, *PRESETS, *VARIANTS)
RESULTS_FILE = "mqar.json"
TABLE_FILE = "mqar.md"
RUNS_DIR = "runs"  # a sweep's run folders, one per (model, width, seq len, kv pairs, lr, seed)
CURVE_POINTS = 10  # periodic evaluations per run (the learning curve), besides the one at step 0


@dataclass(frozen=True)
class MQARResult:
    """One MQAR run. accuracy: argmax == target over the query positions of the test split, in [0, 1] (zoology's
    metric); test_loss: mean cross-entropy (nats) there; train_loss: the mean over the last logged window (a tenth
    of the steps); curve: [step, accuracy] of every evaluation; run_dir: the run folder ("" for a temporary one)."""

    model: str
    width: int
    seq_len: int
    num_kv_pairs: int
    lr: float
    steps: int
    batch_size: int
    seed: int
    accuracy: float
    test_loss: float
    train_loss: float
    num_parameters: int
    seconds: float
    curve: list = field(default_factory=list)
    run_dir: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def mqar_model_config(
    preset: str, width: int, *, vocab_size: int, seq_len: int, num_layers: int = 2, num_heads: int = 1, **overrides
) -> ModelConfig:
    """A `MirasLM` config for MQAR: `num_layers` blocks of width `width` (zoology: 2 layers, 1 attention head), the
    MQAR vocabulary and a context of `seq_len`. `overrides` are further ModelConfig fields (chunk_size, spec, ...)."""
    return ModelConfig(
        preset=preset,
        hidden_size=width,
        num_hidden_layers=num_layers,
        num_heads=num_heads,
        vocab_size=vocab_size,
        max_position_embeddings=seq_len,
        **overrides,
    )


def mqar_train_config(
    model_config: ModelConfig,
    *,
    seq_len: int,
    num_kv_pairs: int,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    train_examples: int | None = None,
    test_examples: int = 1000,
    weight_decay: float = 0.1,
    power_a: float = 0.01,
    eval_every: int | None = None,
    device: str | torch.device = "cpu",
    threads: int = -1,
    progress: bool = False,
) -> TrainConfig:
    """The TrainConfig of one MQAR run (see `train_mqar`); a bad value is a ConfigError naming the field."""
    tenth = max(1, steps // CURVE_POINTS) if isinstance(steps, int) and steps > 0 else 1
    return TrainConfig(
        model=model_config,
        data=MQAR,
        vocab_size=model_config.vocab_size,
        seq_len=seq_len,
        mqar_kv_pairs=num_kv_pairs,
        mqar_train_examples=-1 if train_examples is None else train_examples,
        mqar_test_examples=test_examples,
        mqar_power_a=power_a,
        batch_size=batch_size,
        lr=lr,
        # Warm-up: Miras gates and memories start at designed values that a full-size first step can knock far off.
        warmup_steps=tenth,
        min_lr_ratio=0.0,
        max_steps=steps,
        max_minutes=-1,
        weight_decay=weight_decay,
        grad_clip=1.0,
        log_every=tenth,
        eval_every=eval_every or tenth,
        save_every=-1,  # the checkpoint at the end (and on Ctrl-C) only
        sample_tokens=0,
        seed=seed,
        device=torch.device(device).type,
        threads=threads,  # -1: all cores, no probe; deterministic
        progress=progress,
    )


def train_mqar(
    model_config: ModelConfig,
    *,
    name: str | None = None,
    run_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    **settings: object,
) -> MQARResult:
    """Train `MirasLM(model_config)` from scratch on MQAR with `miras.train.train` and score it on a disjoint test
    split. `settings` are `mqar_train_config`'s keywords: seq_len, num_kv_pairs, steps, batch_size, lr and seed
    (required), train_examples, test_examples, weight_decay, power_a, eval_every, device, threads, progress.

    The task's vocabulary is the model's (`model_config.vocab_size`). train_examples: the size of the training set
    (None: steps * batch_size, capped at MAX_MQAR_TRAIN_EXAMPLES, so that a short run never sees an example twice);
    batches walk through it in a fresh seeded order each epoch. AdamW (weight decay on matrices only, as in
    `miras train`), a linear warm-up over the first tenth of the steps, then a cosine to zero; gradients clipped to
    norm 1. `seed` fixes the data, the initialization and the batch order. eval_every: steps between evaluations
    on the test split (the learning curve; None: a tenth of the steps). name: the model's label in the result
    (default: the preset).

    run_dir: the run folder (None: a temporary one, deleted after). A folder holding a finished run of this config is
    read, not trained or evaluated again; one interrupted with Ctrl-C is continued from its checkpoint; one without a
    checkpoint (killed before its only save) is started again; one holding another run's config is a ConfigError
    naming the field. log: the trainer's lines (default: none). `seconds` in the result is the run's training time
    as its metrics record it, over all its sessions.
    """
    config = mqar_train_config(model_config, **settings)
    with tempfile.TemporaryDirectory(prefix="mqar-") if run_dir is None else contextlib.nullcontext(run_dir) as folder:
        folder = Path(folder) / "run" if run_dir is None else Path(folder)
        config = config.replace(out_dir=str(folder))
        if (folder / CONFIG_FILE).is_file():
            try:
                resumable_checkpoint(folder)
                config = config.replace(resume=str(folder))
            except CheckpointError:  # stopped before its only save: nothing to continue
                shutil.rmtree(folder)
        if config.resume:
            # A ConfigError naming the field when the folder holds another run: every field is compared, not only the
            # non-default ones (as `miras train --resume` does with the flags given).
            resume_config(folder, **config.to_dict())
        if not (config.resume and _finished(folder, config.max_steps)):
            train(config, log=log or _quiet)
        records = MetricsLog(folder).read()
    final = [r for r in records if r["event"] == "final"]
    if not final:  # the trainer returned without its final evaluation, which only a bug would do
        raise RuntimeError(f"MQAR run in {folder} ended without its final evaluation")
    curve = {r["step"]: r["accuracy"] for r in records if r["event"] == "eval"}
    train_loss = [r["loss"] for r in records if r["event"] == "train"]
    with torch.device("meta"):
        num_parameters = MirasLM(model_config).num_parameters()
    return MQARResult(
        model=name or model_config.preset,
        width=model_config.hidden_size,
        seq_len=config.seq_len,
        num_kv_pairs=config.mqar_kv_pairs,
        lr=float(config.lr),
        steps=config.max_steps,
        batch_size=config.batch_size,
        seed=config.seed,
        accuracy=final[-1]["accuracy"],
        test_loss=final[-1]["evals"]["mqar"]["loss"],
        train_loss=train_loss[-1] if train_loss else math.nan,
        num_parameters=num_parameters,
        seconds=final[-1]["elapsed_s"],
        curve=[[step, accuracy] for step, accuracy in sorted(curve.items())],
        run_dir="" if run_dir is None else str(run_dir),
    )


def _quiet(message: str) -> None:
    """The trainer's log of an MQAR run: the sweep prints one line per run instead."""


@dataclass(frozen=True)
class MQARSweep:
    """The grid of `mqar_sweep`: seeds x models x (seq_len, num_kv_pairs) settings x widths x learning rates."""

    models: tuple[str, ...]
    settings: tuple[tuple[int, int], ...]  # (seq_len, num_kv_pairs), only those the task allows
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    steps: int
    batch_size: int
    seeds: tuple[int, ...] = (0, 1, 2)
    vocab_size: int = 256
    num_layers: int = 2
    num_heads: int = 1
    train_examples: int | None = None
    test_examples: int = 1000
    curve_points: int = CURVE_POINTS  # evaluations per run after step 0: eval_every = steps // curve_points
    device: str = "cpu"
    threads: int = -1  # CPU threads of every run (-1: all cores this process may use; never a probe)

    @property
    def eval_every(self) -> int:
        return max(1, self.steps // self.curve_points)

    def runs(self) -> list[dict]:
        """The keys of every run: model, width, seq_len, num_kv_pairs, lr and seed. Seed by seed, so that a sweep
        stopped early has whole seeds done."""
        return [
            dict(model=m, width=w, seq_len=t, num_kv_pairs=k, lr=lr, seed=seed)
            for seed, (t, k), m, w, lr in itertools.product(
                self.seeds, self.settings, self.models, self.widths, self.lrs
            )
        ]

    def model_config(self, model: str, width: int, seq_len: int) -> ModelConfig:
        """The ModelConfig of `model` (a preset, "transformer" or one of VARIANTS) at this sweep's size."""
        preset, spec_changes, changes = VARIANTS.get(model, (model, {}, {}))
        if spec_changes:
            changes = {**changes, "spec": dataclasses.replace(presets.get(preset), **spec_changes)}
        return mqar_model_config(
            preset,
            width,
            vocab_size=self.vocab_size,
            seq_len=seq_len,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            **changes,
        )


def make_sweep(
    models: Sequence[str],
    seq_lens: Sequence[int],
    kv_pairs: Sequence[int],
    widths: Sequence[int],
    lrs: Sequence[float],
    *,
    steps: int,
    batch_size: int,
    **options,
) -> tuple[MQARSweep, list[tuple[int, int]]]:
    """Validate a grid and return (sweep, the (seq_len, kv) pairs left out because 4 * kv > seq_len).

    Every (seq_len, kv) combination is tried, like zoology's sweep over both axes; combinations the task cannot hold
    are skipped rather than fatal, so `--seq-lens 64 256 --kv-pairs 4 32` runs the three that fit. Errors are
    ConfigErrors (ValueErrors) whose `field` is the argument's name, shown by the command line as its flag."""
    for flag, values in (
        ("models", models),
        ("seq_lens", seq_lens),
        ("kv_pairs", kv_pairs),
        ("widths", widths),
        ("lrs", lrs),
    ):
        if not values:
            raise ConfigError(flag, "give at least one value")
    for model in models:
        if model not in MODELS:
            raise ConfigError("models", f"unknown model {model!r}; choose from {', '.join(MODELS)}")
    for flag, values in (("seq_lens", seq_lens), ("kv_pairs", kv_pairs), ("widths", widths)):
        for value in values:
            check_int(flag, value, error=ConfigError)
    for lr in lrs:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError("lrs", f"learning rates must be finite and > 0, got {lr}")
    seeds = tuple(dict.fromkeys(options.pop("seeds", (0, 1, 2))))
    if not seeds:
        raise ConfigError("seeds", "give at least one value")
    for seed in seeds:
        check_int("seeds", seed, 0, error=ConfigError)
    check_int("curve_points", options.get("curve_points", CURVE_POINTS), error=ConfigError)
    check_int("steps", steps, error=ConfigError)
    check_int("batch_size", batch_size, error=ConfigError)
    pairs = [(t, k) for t in dict.fromkeys(seq_lens) for k in dict.fromkeys(kv_pairs)]
    settings = tuple((t, k) for t, k in pairs if 4 * k <= t)
    skipped = [(t, k) for t, k in pairs if 4 * k > t]
    if not settings:
        raise ConfigError(
            "kv_pairs",
            f"no combination fits: MQAR needs seq_len >= 4 * kv_pairs (a 2-token prefix pair and a "
            f"2-token query slot per key); got seq lens {list(seq_lens)} and kv pairs {list(kv_pairs)}",
        )
    sweep = MQARSweep(
        models=tuple(dict.fromkeys(models)),
        settings=settings,
        widths=tuple(sorted(set(widths))),
        lrs=tuple(dict.fromkeys(float(lr) for lr in lrs)),
        seeds=seeds,
        steps=steps,
        batch_size=batch_size,
        **options,
    )
    # Build every model config (cheap, no weights) and probe the task once per setting, so that a bad width, head
    # count or vocabulary fails before hours of training rather than in the middle.
    for model, width in itertools.product(sweep.models, sweep.widths):
        try:
            sweep.model_config(model, width, settings[0][0])
        except ValueError as e:
            raise ConfigError("widths", f"width {width} does not work with {sweep.num_heads} heads: {e}") from None
    for seq_len, kv in settings:
        try:
            mqar_splits(seq_len, kv, sweep.vocab_size, train_examples=1, test_examples=1, seed=0)
        except ValueError as e:
            raise ConfigError("vocab_size", str(e)) from None
    try:  # the trainer's own checks of the rest (batch size, test examples, device, threads)
        _train_config(sweep, sweep.runs()[0])
    except ConfigError as e:
        field = {"mqar_train_examples": "train_examples", "mqar_test_examples": "test_examples"}.get(e.field, e.field)
        raise ConfigError(field, str(e).split(": ", 1)[1]) from None
    return sweep, skipped


def mqar_sweep(
    sweep: MQARSweep,
    out_dir: str | Path | None = None,
    *,
    log: Callable[[str], None] = print,
    train_missing: bool = True,
    jobs: int = 1,
) -> list[dict]:
    """Run every point of `sweep`; returns one record per run: MQARResult.to_dict(), or the run's keys plus "error"
    when it failed (a diverging or crashing model is reported, not fatal to the sweep).

    With out_dir, each run trains in its own run folder, out_dir/runs/<model>-w<width>-T<seq len>-kv<pairs>-lr<lr>-
    s<seed>; records are written to out_dir/mqar.json after every run (atomically), the table and figures are
    refreshed, and a rerun with the same sweep skips the runs already recorded without an error (more seeds, lrs,
    models, widths or settings add runs to the same folder). Records of the same budget outside this grid, made into
    the folder by other commands, are kept: the file, table and figures cover them all (`covering_sweep`), so a sweep
    can be made by several commands (e.g. one per setting, or per model) and committed as its mqar.json alone. Without
    out_dir the runs train in temporary folders.

    train_missing=False (`--collect`) trains nothing: it reports the runs whose folders under out_dir/runs finished
    (e.g. parts of the sweep run elsewhere, their folders copied in) and leaves the others out of the records.

    jobs: runs trained at once, each in a worker process (each run is deterministic, so its result does not depend
    on `jobs`); on a CPU each gets cores // jobs threads unless the sweep sets `threads`, on a GPU they share it.
    """
    if not train_missing and out_dir is None:
        raise ConfigError("out", "collecting finished runs needs the folder that holds them")
    check_int("jobs", jobs, error=ConfigError)
    runs = sweep.runs()
    keys = [_run_key(run) for run in runs]
    saved_file = _store(out_dir, sweep).load() if out_dir is not None else {}
    saved = {_run_key(r): r for r in saved_file.get("runs", [])}
    # The report covers the folder's grid so far (its mqar.json's), then this one's: a part run into a sweep's folder
    # keeps the sweep's rows, columns and order, its cells not run yet empty.
    planned = covering_sweep(_saved_grid(sweep, saved_file["sweep"]), runs) if saved_file else sweep
    # This grid's runs recorded earlier are kept (and skipped) where they succeeded; runs of the same budget outside
    # this grid (e.g. other seeds, models or settings run into the folder before) stay in the file and the report.
    by_key = {key: saved[key] for key in keys if key in saved and "error" not in saved[key]}
    grid = set(keys)
    others = [record for key, record in saved.items() if key not in grid]

    def report() -> None:
        done = others + [by_key[k] for k in keys if k in by_key]
        write_mqar_report(done, covering_sweep(planned, done), out_dir)

    pending = []
    for i, (run, key) in enumerate(zip(runs, keys), 1):
        if key in by_key:
            continue
        label = (
            f"[{i}/{len(runs)}] {run['model']} width {run['width']} seq_len {run['seq_len']} kv "
            f"{run['num_kv_pairs']} lr {run['lr']:g} seed {run['seed']}"
        )
        run_dir = None if out_dir is None else Path(out_dir) / RUNS_DIR / run_name(run)
        if not train_missing and not _finished(run_dir, sweep.steps):
            log(f"{label}: not run (no finished run folder)")
            continue
        pending.append((key, label, run, run_dir))

    def finished(key: tuple, label: str, record: dict) -> None:
        by_key[key] = record
        if "error" in record:
            log(f"{label}: FAILED: {record['error']}")
        else:
            log(f"{label}: accuracy {record['accuracy']:.3f} ({record['seconds']:.0f} s)")
        if out_dir is not None:
            report()

    if jobs == 1 or len(pending) < 2:
        for key, label, run, run_dir in pending:
            finished(key, label, _train_run(sweep, run, run_dir))
    else:
        # Worker processes (spawned: a fresh interpreter, no forked torch state), each run on its share of the cores
        # unless --threads says otherwise; this process alone writes the results, in the order runs finish.
        threads = sweep.threads if sweep.threads > 0 else max(1, len(os.sched_getaffinity(0)) // jobs)
        shared = dataclasses.replace(sweep, threads=threads)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {
                pool.submit(_train_run, shared, run, run_dir): (key, label) for key, label, run, run_dir in pending
            }
            try:
                for future in as_completed(futures):
                    finished(*futures[future], future.result())
            except BaseException:  # Ctrl-C or a worker lost: start no more runs (the running ones keep checkpoints)
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    if out_dir is not None and not pending:  # nothing ran (a rerun, a collect): the report is still written once
        report()
    return [by_key[key] for key in keys if key in by_key]


def covering_sweep(sweep: MQARSweep, records: Sequence[dict]) -> MQARSweep:
    """`sweep` grown to every model, setting, width, lr and seed of `records` (runs of the same budget): the grid a
    folder's report covers when runs of several commands were made into it. New models and settings follow
    `sweep`'s (the table's rows and the figures' lines in order); widths, lrs and seeds are sorted."""

    def union(values, extra):
        return tuple(dict.fromkeys([*values, *extra]))

    return dataclasses.replace(
        sweep,
        models=union(sweep.models, (r["model"] for r in records)),
        settings=union(sweep.settings, ((r["seq_len"], r["num_kv_pairs"]) for r in records)),
        widths=tuple(sorted(set(sweep.widths) | {r["width"] for r in records})),
        lrs=tuple(sorted({*sweep.lrs, *(float(r["lr"]) for r in records)})),
        seeds=tuple(sorted({*sweep.seeds, *(r["seed"] for r in records)})),
    )


def _saved_grid(sweep: MQARSweep, held: dict) -> MQARSweep:
    """`sweep` over the grid (models, settings, widths, lrs, seeds) of `held`, a saved mqar.json's "sweep"."""
    return dataclasses.replace(
        sweep,
        models=tuple(held["models"]),
        settings=tuple(tuple(s) for s in held["settings"]),
        widths=tuple(held["widths"]),
        lrs=tuple(float(lr) for lr in held["lrs"]),
        seeds=tuple(held["seeds"]),
    )


def _train_run(sweep: MQARSweep, run: dict, run_dir: Path | None) -> dict:
    """One run of the sweep (in this process or a worker's): its record, or its keys plus "error" when it failed."""
    try:
        result = train_mqar(
            sweep.model_config(run["model"], run["width"], run["seq_len"]),
            name=run["model"],
            run_dir=run_dir,
            **_run_settings(sweep, run),
        )
    except (RuntimeError, FloatingPointError) as e:  # a model that diverges or breaks; bad input fails earlier
        return {**run, "error": f"{type(e).__name__}: {e}"}
    return {**result.to_dict(), "run_dir": "" if run_dir is None else f"{RUNS_DIR}/{run_name(run)}"}


def _finished(run_dir: Path, steps: int) -> bool:
    """Whether a run folder holds a run that reached its last step (its "final" metrics record)."""
    return any(r["event"] == "final" and r["step"] == steps for r in MetricsLog(run_dir).read())


def run_name(run: dict) -> str:
    """A run's folder name under out_dir/runs: model, width, seq len, kv pairs, lr and seed."""
    return f"{run['model']}-w{run['width']}-T{run['seq_len']}-kv{run['num_kv_pairs']}-lr{run['lr']:g}-s{run['seed']}"


def summarize(records: Sequence[dict]) -> dict[tuple[str, int, int, int], dict]:
    """(model, seq_len, num_kv_pairs, width) -> the point's summary over seeds. For each learning rate the median
    accuracy over the seeds that finished; the point takes, among the lrs with the most seeds finished, the one with
    the highest median (zoology takes the best lr too; on a full grid every lr has every seed), so that a median of
    one seed never outranks a median of three (a grid run on seed 0 first, then on more seeds at its best lr, reports
    that lr), and reports {"lr", "median", "min", "max", "seeds" (finished), "curves" ([step, accuracy] lists, one
    per seed)} there. A point none of whose runs finished maps to {"error": one of its errors}."""
    by_point: dict[tuple, dict[float, list[dict]]] = {}
    errors: dict[tuple, str] = {}
    for r in records:
        key = (r["model"], r["seq_len"], r["num_kv_pairs"], r["width"])
        if "error" in r:
            errors.setdefault(key, r["error"])
        else:
            by_point.setdefault(key, {}).setdefault(float(r["lr"]), []).append(r)
    summary: dict[tuple, dict] = {key: {"error": error} for key, error in errors.items()}
    for key, by_lr in by_point.items():
        medians = {lr: statistics.median(r["accuracy"] for r in done) for lr, done in by_lr.items()}
        lr = max(medians, key=lambda rate: (len(by_lr[rate]), medians[rate]))
        accuracies = [r["accuracy"] for r in by_lr[lr]]
        summary[key] = {
            "lr": lr,
            "median": medians[lr],
            "min": min(accuracies),
            "max": max(accuracies),
            "seeds": len(accuracies),
            "curves": [r.get("curve", []) for r in by_lr[lr]],
        }
    return summary


def median_curve(curves: Sequence[Sequence[Sequence[float]]]) -> list[tuple[int, float]]:
    """The per-step median of learning curves ([step, accuracy] lists) over the curves that reach each step."""
    by_step: dict[int, list[float]] = {}
    for curve in curves:
        for step, accuracy in curve:
            by_step.setdefault(int(step), []).append(accuracy)
    return [(step, statistics.median(values)) for step, values in sorted(by_step.items())]


def mqar_table(records: Sequence[dict], sweep: MQARSweep) -> str:
    """Markdown: one row per (seq_len, kv, model), one column per width; a cell is the median accuracy (%) over the
    seeds at the best lr (`summarize`), the seeds' range and how many finished, "failed" where every run of that
    point failed and "" where none has run yet."""
    summary = summarize(records)
    header = "| seq len | kv pairs | model | " + " | ".join(f"d={w}" for w in sweep.widths) + " |"
    lines = [header, "|" + " --- |" * (3 + len(sweep.widths))]
    for (seq_len, kv), model in itertools.product(sweep.settings, sweep.models):
        cells = [_cell(summary.get((model, seq_len, kv, width)), sweep) for width in sweep.widths]
        lines.append(f"| {seq_len} | {kv} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(point: dict | None, sweep: MQARSweep) -> str:
    if point is None:
        return ""
    if "error" in point:
        return "failed"
    seeds = f"{point['seeds']}/{len(sweep.seeds)} seeds"
    spread = f"{100 * point['min']:.1f}–{100 * point['max']:.1f}, " if point["seeds"] > 1 else ""
    lr = f", lr {point['lr']:g}" if len(sweep.lrs) > 1 else ""
    return f"{100 * point['median']:.1f} ({spread}{seeds}{lr})"


def _state_size(sweep: MQARSweep, model: str, width: int, seq_len: int) -> int:
    return state_size(sweep.model_config(model, width, seq_len), seq_len)


def state_size_table(sweep: MQARSweep) -> str:
    """Markdown: the decode state (`miras.models.state_size`: floats per sequence over all blocks) of every (seq_len,
    kv, model) row and width column of the accuracy table: attention's grows with the sequence, a memory's does not."""
    header = "| seq len | kv pairs | model | " + " | ".join(f"d={w}" for w in sweep.widths) + " |"
    lines = [header, "|" + " --- |" * (3 + len(sweep.widths))]
    for (seq_len, kv), model in itertools.product(sweep.settings, sweep.models):
        cells = [f"{_state_size(sweep, model, width, seq_len):,}" for width in sweep.widths]
        lines.append(f"| {seq_len} | {kv} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_mqar_report(records: Sequence[dict], sweep: MQARSweep, out_dir: str | Path) -> None:
    """out_dir/mqar.json (sweep + records), mqar.md (table, budget, failures, the state sizes) and per (seq_len, kv)
    setting three figures: accuracy against width, mqar-T{seq_len}-kv{kv}.png, accuracy against state size,
    mqar-T{seq_len}-kv{kv}-state.png, and the learning curves (accuracy against step, the median over seeds at the
    best lr, one panel per width), mqar-T{seq_len}-kv{kv}-curves.png. Every file is replaced atomically."""
    from miras.plots import plot_accuracy_curves, plot_accuracy_vs_width  # loads matplotlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _store(out_dir, sweep).save({"sweep": _sweep_dict(sweep), "runs": list(records)}, indent=2)
    failures = [r for r in records if "error" in r]
    text = [
        "# MQAR: test accuracy (%) at the query positions",
        "",
        f"{sweep.num_layers}-layer models, {sweep.num_heads} head(s), vocabulary {sweep.vocab_size}; "
        f"{sweep.steps} AdamW steps of batch {sweep.batch_size}, lrs {', '.join(f'{lr:g}' for lr in sweep.lrs)}; "
        f"{sweep.test_examples} test examples disjoint from the training set; seeds "
        f"{', '.join(map(str, sweep.seeds))}. Each cell: the median over seeds at the learning rate with the best "
        "median among those run on the most seeds, (the seeds' min–max, the seeds finished).",
        "",
        mqar_table(records, sweep),
    ]
    if failures:
        text += (
            ["## Failed runs", ""]
            + [
                f"- {r['model']} width {r['width']} seq len {r['seq_len']} kv {r['num_kv_pairs']} lr {r['lr']:g} "
                f"seed {r['seed']}: {r['error']}"
                for r in failures
            ]
            + [""]
        )
    text += ["## State size", "", state_size_table(sweep)]
    write_text_atomic(out_dir / TABLE_FILE, "\n".join(text))
    summary = summarize(records)
    for seq_len, kv in sweep.settings:
        points = {(m, w): summary.get((m, seq_len, kv, w), {}) for m in sweep.models for w in sweep.widths}
        by_width = {
            model: {w: points[(model, w)]["median"] for w in sweep.widths if "median" in points[(model, w)]}
            for model in sweep.models
        }
        by_width = {model: c for model, c in by_width.items() if c}
        if not by_width:
            continue
        title = f"MQAR: seq len {seq_len}, {kv} kv pairs"
        plot_accuracy_vs_width(by_width, out_dir / f"mqar-T{seq_len}-kv{kv}.png", title=title)
        by_state = {
            model: {_state_size(sweep, model, w, seq_len): accuracy for w, accuracy in curve.items()}
            for model, curve in by_width.items()
        }
        plot_accuracy_vs_width(
            by_state,
            out_dir / f"mqar-T{seq_len}-kv{kv}-state.png",
            title=title,
            xlabel="state size (floats per sequence)",
            tick_every_point=False,
        )
        panels = {
            f"d={w}": {
                model: median_curve(points[(model, w)]["curves"])
                for model in sweep.models
                if any(points[(model, w)].get("curves", []))
            }
            for w in sweep.widths
        }
        plot_accuracy_curves(panels, out_dir / f"mqar-T{seq_len}-kv{kv}-curves.png", title=title)


def _sweep_dict(sweep: MQARSweep) -> dict:
    data = asdict(sweep)
    data["settings"] = [list(s) for s in sweep.settings]
    for name in ("models", "widths", "lrs", "seeds"):
        data[name] = list(data[name])
    return data


def _run_key(record: dict) -> tuple:
    r = record
    return r["model"], r["width"], r["seq_len"], r["num_kv_pairs"], float(r["lr"]), r["seed"]


def _run_settings(sweep: MQARSweep, run: dict) -> dict:
    """`mqar_train_config`'s keywords for one of the sweep's runs."""
    return dict(
        seq_len=run["seq_len"],
        num_kv_pairs=run["num_kv_pairs"],
        steps=sweep.steps,
        batch_size=sweep.batch_size,
        lr=run["lr"],
        seed=run["seed"],
        train_examples=sweep.train_examples,
        test_examples=sweep.test_examples,
        eval_every=sweep.eval_every,
        device=sweep.device,
        threads=sweep.threads,
    )


def _train_config(sweep: MQARSweep, run: dict) -> TrainConfig:
    """The TrainConfig of one of the sweep's runs (what train_mqar trains)."""
    return mqar_train_config(
        sweep.model_config(run["model"], run["width"], run["seq_len"]), **_run_settings(sweep, run)
    )


def _budget(sweep: MQARSweep) -> dict:
    """The fields that change what a run computes, apart from its own keys: records made under other values are not
    reused. (A file from before seeds and learning curves lacks curve_points, so it is refused as another budget.)"""
    data = _sweep_dict(sweep)
    return {
        k: v for k, v in data.items() if k not in ("models", "settings", "widths", "lrs", "seeds", "device", "threads")
    }


def _store(out_dir: str | Path, sweep: MQARSweep) -> ResultsStore:
    return ResultsStore(Path(out_dir) / RESULTS_FILE, "sweep", _budget(sweep))


__all__ = [
    "MODELS",
    "MQARResult",
    "MQARSweep",
    "covering_sweep",
    "make_sweep",
    "median_curve",
    "mqar_model_config",
    "mqar_sweep",
    "mqar_table",
    "mqar_train_config",
    "run_name",
    "state_size_table",
    "summarize",
    "train_mqar",
    "write_mqar_report",
]
