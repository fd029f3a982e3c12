"""MQAR (multi-query associative recall) experiments: training runs and sweeps, with zoology's protocol.

zoology (HazyResearch) trains each model from scratch on MQAR examples with AdamW for a fixed budget, evaluates it on
a disjoint test split, and scores the argmax prediction at the query positions only (every other label is
IGNORE_INDEX). Its figure plots test accuracy against model width, one line per model and one panel per
(sequence length, number of key-value pairs), taking for each point the best accuracy over a small learning-rate
sweep. `train_mqar` is one such run; `mqar_sweep` is the grid; `write_mqar_report` writes the table, the JSON and the
figures. The task itself is `miras.data.synthetic.mqar_splits`.

Differences from zoology, all for CPU budgets: the defaults are far smaller (zoology trains 2-layer models of width
64-256 for 32 epochs of 20k-100k examples at batch 256, vocabulary 8192); the step budget is counted in optimizer
steps rather than epochs; the schedule is the trainer's warm-up + cosine. Models are `MirasLM`s (a short causal conv
is part of every Miras layer, as zoology's BaseConv is part of its models; attention layers have none).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from miras.checks import check_int
from miras.config import TRANSFORMER, ModelConfig
from miras.data.synthetic import mqar_splits
from miras.eval.mqar import evaluate_mqar
from miras.experiments.results import ResultsStore
from miras.io_atomic import write_text_atomic
from miras.models import MirasLM
from miras.presets import PRESETS
from miras.train.config import ConfigError
from miras.train.optim import build_optimizer
from miras.train.step import train_step

MODELS = (TRANSFORMER, *PRESETS)
RESULTS_FILE = "mqar.json"
TABLE_FILE = "mqar.md"
MAX_TRAIN_EXAMPLES = 100_000  # zoology's largest training set; longer runs cycle through it in epochs


@dataclass(frozen=True)
class MQARResult:
    """One MQAR run. accuracy: argmax == target over the query positions of the test split, in [0, 1] (zoology's
    metric); test_loss: mean cross-entropy (nats) there; train_loss: mean over the last tenth of the steps."""

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


def train_mqar(
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
    device: str | torch.device = "cpu",
    name: str | None = None,
) -> MQARResult:
    """Train `MirasLM(model_config)` from scratch on MQAR and score it on a disjoint test split.

    The task's vocabulary is the model's (`model_config.vocab_size`). train_examples: the size of the training set
    (None: steps * batch_size, capped at MAX_TRAIN_EXAMPLES, so that a short run never sees an example twice);
    batches walk through it in a fresh seeded order each epoch. AdamW (weight decay on matrices only, as in
    `miras train`), a linear warm-up over the first tenth of the steps, then a cosine to zero; gradients clipped to
    norm 1. `seed` fixes the data, the initialization and the batch order. name: the model's label in the result
    (default: the preset).
    """
    _check_positive("steps", steps)
    _check_positive("batch_size", batch_size)
    _check_positive("test_examples", test_examples)
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if train_examples is None:
        train_examples = min(steps * batch_size, MAX_TRAIN_EXAMPLES)
    _check_positive("train_examples", train_examples)
    device = torch.device(device)
    start = time.perf_counter()
    data = mqar_splits(
        seq_len,
        num_kv_pairs,
        model_config.vocab_size,
        train_examples=train_examples,
        test_examples=test_examples,
        seed=seed,
        power_a=power_a,
    )
    torch.manual_seed(seed)
    model = MirasLM(model_config).to(device)
    # The trainer's optimizer (miras/train/optim.py). Warm-up: Miras gates and memories start at designed values that
    # a full-size first step can knock far off.
    optimizer, scheduler, _ = build_optimizer(
        model,
        lr=lr,
        weight_decay=weight_decay,
        betas=(0.9, 0.95),
        warmup=max(1, steps // 10),
        total=steps,
        min_ratio=0.0,
        device=device,
    )
    order = torch.Generator().manual_seed(seed)
    perm, cursor = torch.randperm(train_examples, generator=order), 0
    losses = []
    model.train()
    for _ in range(steps):
        if cursor + batch_size > train_examples:  # a new epoch: reshuffle (the incomplete tail batch is dropped)
            perm, cursor = torch.randperm(train_examples, generator=order), 0
        rows = perm[cursor : cursor + min(batch_size, train_examples)]
        cursor += len(rows)
        batch = [(data.train.inputs[rows].to(device), data.train.labels[rows].to(device))]
        # MQAR labels are aligned with the outputs (labels[:, t] scores logits[:, t]), which is what train_step wants.
        loss, _ = train_step(model, optimizer, scheduler, batch, grad_clip=1.0)
        if not math.isfinite(loss):
            raise FloatingPointError(f"MQAR training loss is {loss} at step {len(losses)}; try a lower lr")
        losses.append(loss)
    test = evaluate_mqar(model, data.test, batch_size=max(batch_size, 64), device=device)
    tail = losses[-max(1, steps // 10) :]
    return MQARResult(
        model=name or model_config.preset,
        width=model_config.hidden_size,
        seq_len=seq_len,
        num_kv_pairs=num_kv_pairs,
        lr=float(lr),
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        accuracy=test.accuracy,
        test_loss=test.mean_nll,
        train_loss=sum(tail) / len(tail),
        num_parameters=model.num_parameters(),
        seconds=time.perf_counter() - start,
    )


@dataclass(frozen=True)
class MQARSweep:
    """The grid of `mqar_sweep`: models x (seq_len, num_kv_pairs) settings x widths x learning rates."""

    models: tuple[str, ...]
    settings: tuple[tuple[int, int], ...]  # (seq_len, num_kv_pairs), only those the task allows
    widths: tuple[int, ...]
    lrs: tuple[float, ...]
    steps: int
    batch_size: int
    seed: int = 0
    vocab_size: int = 256
    num_layers: int = 2
    num_heads: int = 1
    train_examples: int | None = None
    test_examples: int = 1000
    device: str = "cpu"

    def runs(self) -> list[dict]:
        """The keyword arguments of every `train_mqar` call except the model config, plus "model" and "width"."""
        return [
            dict(model=m, width=w, seq_len=t, num_kv_pairs=k, lr=lr)
            for (t, k), m, w, lr in itertools.product(self.settings, self.models, self.widths, self.lrs)
        ]

    def model_config(self, model: str, width: int, seq_len: int) -> ModelConfig:
        return mqar_model_config(
            model,
            width,
            vocab_size=self.vocab_size,
            seq_len=seq_len,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
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
            _check_positive(flag, value, ConfigError)
    for lr in lrs:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigError("lrs", f"learning rates must be finite and > 0, got {lr}")
    _check_positive("steps", steps, ConfigError)
    _check_positive("batch_size", batch_size, ConfigError)
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
    return sweep, skipped


def mqar_sweep(
    sweep: MQARSweep,
    out_dir: str | Path | None = None,
    *,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every point of `sweep`; returns one record per run: MQARResult.to_dict(), or the run's keys plus "error"
    when it failed (a diverging or crashing model is reported, not fatal to the sweep).

    With out_dir, records are written to out_dir/mqar.json after every run (atomically), the table and figures are
    refreshed, and a rerun with the same sweep skips the runs already recorded without an error.
    """
    runs = sweep.runs()
    keys = [_run_key(run) for run in runs]
    saved = _load_records(out_dir, sweep) if out_dir is not None else {}
    # The file only ever holds this grid's runs: earlier ones are kept (and skipped) where they succeeded.
    by_key = {key: saved[key] for key in keys if key in saved and "error" not in saved[key]}
    for i, (run, key) in enumerate(zip(runs, keys), 1):
        if key in by_key:
            continue
        label = (
            f"[{i}/{len(runs)}] {run['model']} width {run['width']} seq_len {run['seq_len']} kv "
            f"{run['num_kv_pairs']} lr {run['lr']:g}"
        )
        try:
            result = train_mqar(
                sweep.model_config(run["model"], run["width"], run["seq_len"]),
                seq_len=run["seq_len"],
                num_kv_pairs=run["num_kv_pairs"],
                steps=sweep.steps,
                batch_size=sweep.batch_size,
                lr=run["lr"],
                seed=sweep.seed,
                train_examples=sweep.train_examples,
                test_examples=sweep.test_examples,
                device=sweep.device,
                name=run["model"],
            )
            by_key[key] = result.to_dict()
            log(f"{label}: accuracy {result.accuracy:.3f} ({result.seconds:.0f} s)")
        except (RuntimeError, FloatingPointError) as e:  # a model that diverges or breaks; bad input fails earlier
            by_key[key] = {**run, "error": f"{type(e).__name__}: {e}"}
            log(f"{label}: FAILED: {by_key[key]['error']}")
        if out_dir is not None:
            write_mqar_report([by_key[k] for k in keys if k in by_key], sweep, out_dir)
    records = [by_key[key] for key in keys]
    if out_dir is not None:
        write_mqar_report(records, sweep, out_dir)
    return records


def best_over_lrs(records: Sequence[dict]) -> dict[tuple[str, int, int, int], dict]:
    """(model, seq_len, num_kv_pairs, width) -> the record with the highest accuracy over the learning rates (zoology's
    figure takes this maximum); a point whose every run failed maps to one of its error records."""
    best: dict[tuple[str, int, int, int], dict] = {}
    for r in records:
        key = (r["model"], r["seq_len"], r["num_kv_pairs"], r["width"])
        current = best.get(key)
        if (
            current is None
            or ("error" in current and "error" not in r)
            or ("error" not in r and r["accuracy"] > current["accuracy"])
        ):
            best[key] = r
    return best


def mqar_table(records: Sequence[dict], sweep: MQARSweep) -> str:
    """Markdown: one row per (seq_len, kv, model), one column per width; cells are the best accuracy over the lrs
    in percent, "failed" where every run of that point failed and "" where it has not run yet."""
    best = best_over_lrs(records)
    header = "| seq len | kv pairs | model | " + " | ".join(f"d={w}" for w in sweep.widths) + " |"
    lines = [header, "|" + " --- |" * (3 + len(sweep.widths))]
    for (seq_len, kv), model in itertools.product(sweep.settings, sweep.models):
        cells = []
        for width in sweep.widths:
            r = best.get((model, seq_len, kv, width))
            cells.append("" if r is None else "failed" if "error" in r else f"{100 * r['accuracy']:.1f}")
        lines.append(f"| {seq_len} | {kv} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_mqar_report(records: Sequence[dict], sweep: MQARSweep, out_dir: str | Path) -> None:
    """out_dir/mqar.json (sweep + records), mqar.md (table, budget, failures) and one accuracy-vs-width figure per
    (seq_len, kv) setting, mqar-T{seq_len}-kv{kv}.png. Every file is replaced atomically."""
    from miras.plots import plot_accuracy_vs_width  # loads matplotlib

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _store(out_dir, sweep).save({"sweep": _sweep_dict(sweep), "runs": list(records)}, indent=2)
    failures = [r for r in records if "error" in r]
    text = [
        "# MQAR: test accuracy (%) at the query positions, best over learning rates",
        "",
        f"{sweep.num_layers}-layer models, {sweep.num_heads} head(s), vocabulary {sweep.vocab_size}; "
        f"{sweep.steps} AdamW steps of batch {sweep.batch_size}, lrs {', '.join(f'{lr:g}' for lr in sweep.lrs)}; "
        f"{sweep.test_examples} test examples disjoint from the training set; seed {sweep.seed}.",
        "",
        mqar_table(records, sweep),
    ]
    if failures:
        text += (
            ["## Failed runs", ""]
            + [
                f"- {r['model']} width {r['width']} seq len {r['seq_len']} kv {r['num_kv_pairs']} lr {r['lr']:g}: "
                f"{r['error']}"
                for r in failures
            ]
            + [""]
        )
    write_text_atomic(out_dir / TABLE_FILE, "\n".join(text))
    best = best_over_lrs(records)
    for seq_len, kv in sweep.settings:
        curves = {
            model: {
                w: best[(model, seq_len, kv, w)]["accuracy"]
                for w in sweep.widths
                if "accuracy" in best.get((model, seq_len, kv, w), {})
            }
            for model in sweep.models
        }
        curves = {model: c for model, c in curves.items() if c}
        if curves:
            plot_accuracy_vs_width(
                curves, out_dir / f"mqar-T{seq_len}-kv{kv}.png", title=f"MQAR: seq len {seq_len}, {kv} kv pairs"
            )


def _check_positive(name: str, value: object, error: Callable[[str, str], ValueError] | None = None) -> None:
    check_int(name, value, error=error)


def _sweep_dict(sweep: MQARSweep) -> dict:
    data = asdict(sweep)
    data["settings"] = [list(s) for s in sweep.settings]
    for name in ("models", "widths", "lrs"):
        data[name] = list(data[name])
    return data


def _run_key(record: dict) -> tuple:
    return record["model"], record["width"], record["seq_len"], record["num_kv_pairs"], float(record["lr"])


def _budget(sweep: MQARSweep) -> dict:
    """The fields that change what a run computes, apart from its own keys: records made under other values are not
    reused."""
    data = _sweep_dict(sweep)
    return {k: v for k, v in data.items() if k not in ("models", "settings", "widths", "lrs", "device")}


def _store(out_dir: str | Path, sweep: MQARSweep) -> ResultsStore:
    return ResultsStore(Path(out_dir) / RESULTS_FILE, "sweep", _budget(sweep))


def _load_records(out_dir: str | Path, sweep: MQARSweep) -> dict[tuple, dict]:
    """The records of an earlier sweep in the same folder, by run key (ConfigError if its budget differed)."""
    return {_run_key(r): r for r in _store(out_dir, sweep).load().get("runs", [])}


__all__ = [
    "MODELS",
    "MQARResult",
    "MQARSweep",
    "best_over_lrs",
    "make_sweep",
    "mqar_model_config",
    "mqar_sweep",
    "mqar_table",
    "train_mqar",
    "write_mqar_report",
]
