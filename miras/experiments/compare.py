"""`compare`: train several models under one parameter and token budget, then tabulate them in the paper's layout.

Each candidate (a preset, optionally with its MemorySpec or ModelConfig fields changed: the ablations) is

1. trained as a language model by `miras.train.train` on the same data, with the same steps x batch x sequence length
   (so the same training tokens), the same optimizer settings and seed, and the same parameter count: at the size's
   width every candidate's SwiGLU width is set so that its non-embedding parameters match the largest candidate's
   (the width, and so the embedding, is the same for all, so total counts match too);
2. scored by validation perplexity on every `val_data` set (the trainer's final evaluation: held-out State of the
   Union addresses and Wikipedia by default);
3. trained from scratch on MQAR at the LM's own architecture (same width, depth, heads and MLP),
   `miras.experiments.mqar`;
4. asked needle-in-a-haystack questions as a trained LM, `miras.eval.niah.evaluate_niah`.

Results go to out_dir: results.json (the budget and one row per candidate), results.md (one table: rows = models;
columns = perplexities, MQAR accuracy, NIAH accuracy, parameters, training tokens/s), loss.png (every candidate's
training loss on one plot) and runs/<name>/, an ordinary run folder per candidate (`miras generate`, `miras eval`
and `--resume` work on it). Both result files are rewritten atomically after every candidate, and a rerun in the same
folder skips the candidates already finished and continues an interrupted training from its last checkpoint. A
candidate that fails (diverges, runs out of memory, ...) gets its error in its row; the others still run.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from miras.checks import check_int
from miras.config import SIZES, TRANSFORMER, ModelConfig
from miras.data import Tokenizer
from miras.data.synthetic import NIAH_VARIANTS
from miras.device import resolve_device
from miras.experiments.results import ResultsStore
from miras.io_atomic import write_text_atomic
from miras.models import MirasLM
from miras.presets import PRESETS
from miras.run.checkpoint import LATEST, load_trained
from miras.run.folder import CONFIG_FILE, TOKENIZER_DIR, MetricsLog, read_config
from miras.spec import MemorySpec
from miras.train import ConfigError, TrainConfig, train
from miras.train.config import absolute_spec
from miras.train.lm_task import train_tokenizer

DEFAULT_MODELS = ("moneta", "yaad", "memora", "gated_deltanet", "titans", "transformer")
MODELS = (*PRESETS, TRANSFORMER)
RESULTS_FILE = "results.json"
TABLE_FILE = "results.md"
LOSS_PLOT = "loss.png"
RUNS_DIR = "runs"


@dataclass(frozen=True)
class Candidate:
    """One row. name: its key and run folder name (letters, digits, '.', '_', '-'); label: its table text (default
    the name); preset: a `miras.presets` name or "transformer"; spec: replaces the preset's MemorySpec; overrides:
    other ModelConfig fields (e.g. use_rope=False); value: the x coordinate of an ablation plot."""

    name: str
    preset: str
    spec: MemorySpec | None = None
    overrides: dict = field(default_factory=dict)
    label: str = ""
    value: float | None = None

    @property
    def title(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class CompareConfig:
    """The shared budget. Field names are the command's flags (`mqar_steps` is `--mqar-steps`).

    LM: a BPE of vocab_size tokens trained on `data`, shared by all; `steps` optimizer steps of batch_size x seq_len
    tokens (seq_len -1: the size's context), AdamW at `lr`
    (the trainer's warm-up, at most a fifth of the steps, then cosine), `eval_tokens` tokens per validation set.
    MQAR: `mqar_steps` steps (0 skips MQAR) of mqar_batch_size examples of mqar_seq_len tokens with mqar_kv_pairs
    pairs from a vocabulary of mqar_vocab_size, at mqar_lr. NIAH: niah_samples prompts (0 skips NIAH) per
    (variant, length, depth); niah_lengths empty means the LM's seq_len.
    """

    size: str = "tiny"
    steps: int = 400
    batch_size: int = 8
    seq_len: int = -1
    lr: float = 3e-3
    seed: int = 0
    match_params: bool = True
    data: str = "sotu"
    val_data: tuple[str, ...] = ("sotu", "wiki")
    vocab_size: int = 8192
    eval_tokens: int = 16384
    # MQAR: zoology's model shape (2 blocks as the LM has, width 64, one head) with each candidate's design; a
    # setting and budget past the phase change (experiments README, "Recall: where models learn it"): a width-64,
    # 1-head transformer or gated DeltaNet is above 96% by step 600 at lr 3e-3 on every seed measured, while the
    # LM's own shape (width 128, 4 heads of 32) stays at guessing after 1000 steps.
    mqar_steps: int = 1000
    mqar_seq_len: int = 32
    mqar_kv_pairs: int = 4
    mqar_batch_size: int = 64
    mqar_lr: float = 3e-3
    mqar_vocab_size: int = 256
    mqar_width: int = 64
    mqar_heads: int = 1
    niah_lengths: tuple[int, ...] = ()
    niah_depths: tuple[float, ...] = (0.0, 0.5, 1.0)
    niah_variants: tuple[str, ...] = ("passkey", "number", "uuid")
    niah_samples: int = 2
    # Where and how to run; these do not change the results, so a rerun may change them.
    device: str = "auto"
    threads: int = -1
    progress: bool = True
    cache_dir: str = ""  # token cache of new runs ("": ~/.cache/miras/tokens)

    def __post_init__(self) -> None:
        for name in ("val_data", "niah_lengths", "niah_depths", "niah_variants"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError("device", f"{self.device!r} is not one of auto, cpu, cuda")
        resolve_device(self.device, "device", error=ConfigError)  # refuses cuda on a machine without it
        if self.size not in SIZES:
            raise ConfigError("size", f"{self.size!r} is not one of {', '.join(SIZES)}")
        for name in (
            "steps",
            "batch_size",
            "eval_tokens",
            "mqar_seq_len",
            "mqar_kv_pairs",
            "mqar_batch_size",
            "mqar_vocab_size",
            "mqar_width",
            "mqar_heads",
        ):
            _integer(name, getattr(self, name), low=1)
        _integer("vocab_size", self.vocab_size, low=257)  # the byte-level BPE's 256 bytes and EOS
        for name in ("mqar_steps", "niah_samples", "seed"):
            _integer(name, getattr(self, name), low=0)
        _integer("seq_len", self.seq_len, low=1, unset=-1)
        _integer("threads", self.threads, low=1, unset=-1)
        for name in ("lr", "mqar_lr"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(name, f"must be a finite number > 0, got {value!r}")
        if not self.val_data:
            raise ConfigError("val_data", "give at least one validation set")
        for length in self.niah_lengths:
            _integer("niah_lengths", length, low=1)
        for depth in self.niah_depths:
            if not 0.0 <= depth <= 1.0:
                raise ConfigError("niah_depths", f"depths must be in [0, 1], got {depth}")
        unknown = [v for v in self.niah_variants if v not in NIAH_VARIANTS]
        if unknown or not self.niah_variants:
            raise ConfigError("niah_variants", f"choose one or more of {', '.join(NIAH_VARIANTS)}, got {unknown}")
        if self.niah_samples and not self.niah_depths:
            raise ConfigError("niah_depths", "give at least one depth (or --niah-samples 0 to skip NIAH)")
        if self.mqar_steps and 4 * self.mqar_kv_pairs > self.mqar_seq_len:
            raise ConfigError(
                "mqar_kv_pairs",
                f"{self.mqar_kv_pairs} pairs need --mqar-seq-len >= "
                f"{4 * self.mqar_kv_pairs} (a key-value pair and a query slot each)",
            )
        if self.mqar_steps and self.mqar_width % self.mqar_heads:
            raise ConfigError("mqar_heads", f"{self.mqar_heads} heads do not divide --mqar-width {self.mqar_width}")
        if self.mqar_steps and self.mqar_vocab_size < 2 * self.mqar_kv_pairs + 2:
            raise ConfigError(
                "mqar_vocab_size",
                f"needs >= {2 * self.mqar_kv_pairs + 2} for {self.mqar_kv_pairs} distinct keys and values",
            )

    @property
    def lm_seq_len(self) -> int:
        return (
            self.seq_len
            if self.seq_len != -1
            else SIZES[self.size].get("max_position_embeddings", ModelConfig.max_position_embeddings)
        )

    @property
    def warmup_steps(self) -> int:
        # The trainer's 50-step warm-up, but at most a fifth of the run, so that short runs reach their peak lr.
        return min(50, self.steps // 5)

    @property
    def train_tokens(self) -> int:
        return self.steps * self.batch_size * self.lm_seq_len

    def budget(self) -> dict:
        """The fields that change results: a folder's earlier rows are reused only under the same budget."""
        data = dataclasses.asdict(self)
        for name in ("device", "threads", "progress", "cache_dir"):
            del data[name]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def model_configs(candidates: Sequence[Candidate], config: CompareConfig, vocab_size: int) -> dict[str, ModelConfig]:
    """The ModelConfig of every candidate at `config.size`, with SwiGLU widths matched when config.match_params.

    Matching: the width is the size's for every candidate; a block's SwiGLU has 3 * width * intermediate_size
    parameters, so each candidate's intermediate_size is moved by round(deficit / (3 * width * layers)) towards the
    largest candidate's non-embedding count (the mixers differ; the SwiGLU absorbs the difference, to within
    3 * width * layers parameters). Nobody shrinks, so no model is starved of its default MLP.
    """
    base = {c.name: _model_config(c, config, vocab_size) for c in candidates}
    if not config.match_params:
        return base
    counts = {name: _count(cfg) for name, cfg in base.items()}
    target = max(counts.values())
    matched = {}
    for name, cfg in base.items():
        per_unit = 3 * cfg.hidden_size * cfg.num_hidden_layers
        matched[name] = dataclasses.replace(
            cfg, intermediate_size=cfg.intermediate_size + round((target - counts[name]) / per_unit)
        )
    return matched


def compare(
    candidates: Sequence[Candidate],
    config: CompareConfig,
    out_dir: str | Path,
    *,
    title: str = "Comparison",
    notes: str = "",
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every candidate under `config` (see the module docstring); returns the rows in candidate order. title and
    notes (a paragraph under the budget) head results.md."""
    if not candidates:
        raise ConfigError("models", "give at least one model")
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ConfigError("models", f"names must be unique, got {names}")
    for c in candidates:
        if not c.name or not all(ch.isalnum() or ch in "._-" for ch in c.name):
            raise ConfigError("models", f"{c.name!r} is not a valid name (letters, digits, '.', '_', '-')")
        if c.preset not in MODELS:
            raise ConfigError("models", f"unknown model {c.preset!r}; choose from {', '.join(MODELS)}")
    out_dir = Path(out_dir)
    # Flags the trainer checks (data paths, device, ...) fail here, once, rather than in every candidate's row.
    _train_config(config, out_dir / RUNS_DIR / candidates[0].name)
    saved = _load_results(out_dir, config)
    rows: dict[str, dict] = dict(saved)  # earlier rows of other candidates stay in the file
    # The budget goes to disk before anything is built from it (the shared tokenizer first), so a folder's contents
    # always belong to the budget its results.json names.
    _write_results(out_dir, config, candidates, rows, title, notes)
    tokenizer = _tokenizer(out_dir, config)
    configs = model_configs(candidates, config, tokenizer.vocab_size)  # ValueErrors of a bad candidate surface here
    for c in candidates:
        run_dir = out_dir / RUNS_DIR / c.name
        # Through ModelConfig, so that a config saved before a field existed compares with the value it implies.
        on_disk = (run_dir / CONFIG_FILE).is_file() and ModelConfig.from_dict(read_config(run_dir)["model"]).to_dict()
        if on_disk and on_disk != configs[c.name].to_dict():
            raise ConfigError(
                "out",
                f"{run_dir} holds a different model than {c.title} is now (the matched SwiGLU "
                f"width depends on the whole set of models); use a new --out folder",
            )
    for i, c in enumerate(candidates, 1):
        previous = saved.get(c.name)
        if previous is not None and not previous["errors"]:
            log(f"[{i}/{len(candidates)}] {c.title}: already finished, skipped")
            continue
        log(f"[{i}/{len(candidates)}] {c.title}")
        rows[c.name] = _run_candidate(c, configs[c.name], config, out_dir, log)
        _write_results(out_dir, config, candidates, rows, title, notes)
    _write_results(out_dir, config, candidates, rows, title, notes)
    return [rows[c.name] for c in candidates]


def candidates_for(models: Sequence[str]) -> list[Candidate]:
    """One plain candidate per preset name (the rows of `miras compare`)."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ConfigError("models", f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return [Candidate(name=m, preset=m) for m in models]


# ---------------------------------------------------------------------------------------------------------------
# One candidate


def _run_candidate(
    c: Candidate, model_config: ModelConfig, config: CompareConfig, out_dir: Path, log: Callable[[str], None]
) -> dict:
    """Train, then score; every stage's failure is recorded in row["errors"] and the later stages still run where
    they can (MQAR does not need the LM; NIAH does)."""
    row: dict = {
        "name": c.name,
        "label": c.title,
        "preset": c.preset,
        "value": c.value,
        "model": model_config.to_dict(),
        "errors": {},
    }
    run_dir = out_dir / RUNS_DIR / c.name
    device = resolve_device(config.device, "device", error=ConfigError)
    try:
        row["lm"] = _train_lm(run_dir, model_config, config, out_dir / TOKENIZER_DIR)
        log(
            "  LM: "
            + ", ".join(f"{s} ppl {e['ppl']:.2f}" for s, e in row["lm"]["ppl"].items())
            + f"; {row['lm']['tok_s']:,.0f} tokens/s"
        )
    except Exception as e:  # noqa: BLE001 - any failure of one model is reported in its row, not fatal to the rest
        row["errors"]["lm"] = _describe(e)
        log(f"  LM FAILED: {row['errors']['lm']}")
    if config.mqar_steps:
        try:
            row["mqar"] = _mqar(model_config, config, device, out_dir / RUNS_DIR / f"{c.name}-mqar")
            log(f"  MQAR accuracy {row['mqar']['accuracy']:.3f} ({row['mqar']['seconds']:.0f} s)")
        except Exception as e:  # noqa: BLE001 - as above
            row["errors"]["mqar"] = _describe(e)
            log(f"  MQAR FAILED: {row['errors']['mqar']}")
    if config.niah_samples and "lm" in row:
        try:
            row["niah"] = _niah(run_dir, config, device)
            log(f"  NIAH accuracy {row['niah']['accuracy']:.3f}")
        except Exception as e:  # noqa: BLE001 - as above
            row["errors"]["niah"] = _describe(e)
            log(f"  NIAH FAILED: {row['errors']['niah']}")
    return row


def _train_lm(run_dir: Path, model_config: ModelConfig, config: CompareConfig, tokenizer: Path) -> dict:
    """Train (or finish training) the candidate's LM in run_dir through `miras.train.train`; returns its LM summary.
    `tokenizer`: the shared tokenizer's folder."""
    if (run_dir / CONFIG_FILE).is_file() and not (run_dir / LATEST).is_file():
        shutil.rmtree(run_dir)  # a first session stopped before its first save: nothing to continue, start again
    if (run_dir / CONFIG_FILE).is_file():
        # A resumed run keeps its saved settings except these (the trainer's RESUMABLE fields), cache_dir included.
        result = train(
            TrainConfig(resume=str(run_dir), device=config.device, threads=config.threads, progress=config.progress)
        )
    else:
        result = train(_train_config(config, run_dir, model_config, str(tokenizer.absolute())))
    records = MetricsLog(run_dir).read()
    return {
        "run_dir": str(run_dir),
        "params": _count(model_config, embeddings=True),
        "non_embedding_params": _count(model_config),
        "hidden_size": model_config.hidden_size,
        "intermediate_size": model_config.intermediate_size,
        "steps": result.step,
        "tokens": result.tokens,
        # The trainer keys its evaluations by absolute path; the table by the spelling the user gave.
        "ppl": {
            spec: {k: result.evals[absolute_spec(spec)][k] for k in ("ppl", "loss", "tokens")}
            for spec in config.val_data
        },
        "tok_s": _tokens_per_second(records),
        "train_loss": [[r["step"], r["loss"]] for r in records if r["event"] == "train"],
    }


def _train_config(
    config: CompareConfig, run_dir: Path, model: ModelConfig | None = None, tokenizer: str = "bpe"
) -> TrainConfig:
    """The TrainConfig of a candidate's run (it validates data, val_data, device and the optimizer settings)."""
    return TrainConfig(
        model=model,
        preset=model.preset if model else "moneta",
        size=config.size,
        data=config.data,
        val_data=config.val_data,
        tokenizer=tokenizer,
        vocab_size=config.vocab_size,
        seq_len=config.lm_seq_len,
        batch_size=config.batch_size,
        lr=config.lr,
        warmup_steps=config.warmup_steps,
        max_steps=config.steps,
        max_minutes=-1,
        eval_every=-1,
        final_eval_tokens=config.eval_tokens,
        sample_tokens=0,
        seed=config.seed,
        out_dir=str(run_dir),
        device=config.device,
        threads=config.threads,  # -1: every core, fixed: a probe per model would make the runs differ in more
        progress=config.progress,
        cache_dir=config.cache_dir,
    )


def _mqar(model_config: ModelConfig, config: CompareConfig, device: torch.device, run_dir: Path) -> dict:
    """The candidate's design (spec, gates, chunk, conv, depth) at MQAR's shape (mqar_width, mqar_heads; head and
    SwiGLU widths derived from them) trained from scratch on MQAR through `miras.train.train`, in its own run folder."""
    from miras.experiments.mqar import train_mqar

    mqar_config = dataclasses.replace(
        model_config,
        vocab_size=config.mqar_vocab_size,
        max_position_embeddings=config.mqar_seq_len,
        hidden_size=config.mqar_width,
        num_heads=config.mqar_heads,
        head_dim=None,
        intermediate_size=None,
    )
    result = train_mqar(
        mqar_config,
        seq_len=config.mqar_seq_len,
        num_kv_pairs=config.mqar_kv_pairs,
        steps=config.mqar_steps,
        batch_size=config.mqar_batch_size,
        lr=config.mqar_lr,
        seed=config.seed,
        device=device,
        threads=config.threads,
        run_dir=run_dir,
    )
    return result.to_dict()


def _niah(run_dir: Path, config: CompareConfig, device: torch.device) -> dict:
    from miras.eval.niah import evaluate_niah

    model, tokenizer = load_trained(run_dir, device)
    result = evaluate_niah(
        model,
        tokenizer,
        lengths=config.niah_lengths or (config.lm_seq_len,),
        depths=config.niah_depths,
        variants=config.niah_variants,
        samples_per_cell=config.niah_samples,
        seed=config.seed,
        device=device,
    )
    return {"accuracy": result.accuracy, "by_variant": result.by_variant, "samples": len(result.samples)}


# ---------------------------------------------------------------------------------------------------------------
# Output


# Said under the table when every model's NIAH accuracy is 0, so that the column is read for what it is.
NIAH_AT_ZERO = (
    "NIAH is 0 for every model: a needle is recalled by a language model that has learned to copy a span of its "
    "context, which small LMs learn only after far more tokens than a CPU budget gives (at these perplexities they "
    "still predict mostly from frequent words). The column checks the pipeline here; it discriminates for LMs trained "
    "at scale, e.g. `--size 170m --steps 20000` on a GPU. Recall itself is measured by the MQAR column."
)


def results_table(rows: Sequence[dict], config: CompareConfig) -> str:
    """The paper-style table: one row per model; perplexity per validation set, MQAR and NIAH accuracy (%),
    parameters (total and without the embedding), training tokens/s. "failed" marks a stage that failed."""
    head = ["Model", *(f"{s} ppl ↓" for s in config.val_data)]
    if config.mqar_steps:
        head.append("MQAR acc ↑")
    if config.niah_samples:
        head.append("NIAH acc ↑")
    head += ["params", "non-emb params", "MLP width", "tok/s ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        lm = row.get("lm")
        failed = {stage: "failed" for stage in row["errors"]}
        cells = [row["label"]]
        cells += [
            f"{lm['ppl'][s]['ppl']:.2f}" if lm and s in lm["ppl"] else failed.get("lm", "") for s in config.val_data
        ]
        if config.mqar_steps:
            cells.append(f"{100 * row['mqar']['accuracy']:.1f}" if "mqar" in row else failed.get("mqar", ""))
        if config.niah_samples:
            cells.append(
                f"{100 * row['niah']['accuracy']:.1f}" if "niah" in row else failed.get("niah", failed.get("lm", ""))
            )
        if lm:
            cells += [
                f"{lm['params'] / 1e6:.3f}M",
                f"{lm['non_embedding_params'] / 1e6:.3f}M",
                str(lm["intermediate_size"]),
                f"{lm['tok_s']:,.0f}",
            ]
        else:
            model = row["model"]
            cells += [
                f"{_count(ModelConfig.from_dict(model), embeddings=True) / 1e6:.3f}M",
                f"{_count(ModelConfig.from_dict(model)) / 1e6:.3f}M",
                str(model["intermediate_size"]),
                failed.get("lm", ""),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def budget_text(config: CompareConfig) -> str:
    """The budget in words, for the head of a results file."""
    width = SIZES[config.size]["hidden_size"]
    text = [
        f"Language models: size {config.size} (width {width}), {config.steps} steps x {config.batch_size} x "
        f"{config.lm_seq_len} tokens = {config.train_tokens:,} training tokens each on `{config.data}`, AdamW lr "
        f"{config.lr:g}, seed {config.seed}; "
        + ("SwiGLU widths matched to equal parameter counts" if config.match_params else "default SwiGLU widths")
        + f". Perplexity on {config.eval_tokens:,} tokens of each validation set.",
    ]
    if config.mqar_steps:
        text.append(
            f"MQAR: each design at width {config.mqar_width} with {config.mqar_heads} head(s) trained from scratch "
            f"for {config.mqar_steps} steps x {config.mqar_batch_size} examples (seq len {config.mqar_seq_len}, "
            f"{config.mqar_kv_pairs} kv pairs, vocab {config.mqar_vocab_size}, lr {config.mqar_lr:g}, seed "
            f"{config.seed}); accuracy at the query positions ({100 / config.mqar_kv_pairs:.0f}% is guessing among the "
            f"values in context)."
        )
    if config.niah_samples:
        lengths = ", ".join(map(str, config.niah_lengths or (config.lm_seq_len,)))
        text.append(
            f"NIAH: greedy decoding of the trained LM; {', '.join(config.niah_variants)} at length(s) "
            f"{lengths}, depths {', '.join(f'{d:g}' for d in config.niah_depths)}, {config.niah_samples} "
            f"sample(s) per cell."
        )
    return "\n".join(f"- {line}" for line in text) + "\n"


def _write_results(
    out_dir: Path, config: CompareConfig, candidates: Sequence[Candidate], rows: dict[str, dict], title: str, notes: str
) -> None:
    """results.json, results.md and loss.png, each replaced atomically; the table and plot show `candidates`."""
    from miras.plots import plot_loss_curves  # loads matplotlib

    out_dir.mkdir(parents=True, exist_ok=True)
    _store(out_dir, config).save({"budget": config.budget(), "rows": rows})
    shown = [rows[c.name] for c in candidates if c.name in rows]
    text = [f"# {title}", "", budget_text(config), *([notes, ""] if notes else []), results_table(shown, config)]
    niah = [row["niah"]["accuracy"] for row in shown if "niah" in row]
    if niah and not any(niah):
        text += [NIAH_AT_ZERO, ""]
    failures = [(row["label"], stage, error) for row in shown for stage, error in row["errors"].items()]
    if failures:
        text += ["## Failures", ""] + [f"- {label}, {stage}: {error}" for label, stage, error in failures] + [""]
    write_text_atomic(out_dir / TABLE_FILE, "\n".join(text))
    curves = {row["label"]: row["lm"]["train_loss"] for row in shown if row.get("lm", {}).get("train_loss")}
    if curves:
        plot_loss_curves(curves, out_dir / LOSS_PLOT, title=f"{title}: training loss")


def _store(out_dir: Path, config: CompareConfig) -> ResultsStore:
    return ResultsStore(out_dir / RESULTS_FILE, "budget", config.budget())


def _load_results(out_dir: Path, config: CompareConfig) -> dict[str, dict]:
    return _store(out_dir, config).load().get("rows", {})


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _model_config(c: Candidate, config: CompareConfig, vocab_size: int) -> ModelConfig:
    try:
        return ModelConfig.from_size(config.size, preset=c.preset, spec=c.spec, vocab_size=vocab_size, **c.overrides)
    except ValueError as e:
        raise ConfigError("models", f"{c.title}: {e}") from None


def _count(model_config: ModelConfig, embeddings: bool = False) -> int:
    """Parameters of MirasLM(model_config), counted on the meta device (no memory, no initialization cost)."""
    with torch.device("meta"):
        model = MirasLM(model_config)
    return model.num_parameters(exclude_embeddings=not embeddings)


def _tokenizer(out_dir: Path, config: CompareConfig) -> Tokenizer:
    """One tokenizer for every candidate, so their perplexities count the same tokens: the BPE `miras train` would
    train (miras.train.setup.train_tokenizer), trained once and kept in out_dir; each run uses it from there."""
    path = out_dir / TOKENIZER_DIR
    if (path / "tokenizer_meta.json").is_file():
        return Tokenizer.load(path)
    tokenizer = train_tokenizer(_train_config(config, out_dir / RUNS_DIR / "_"))
    tokenizer.save(path)
    return tokenizer


def _tokens_per_second(records: Sequence[dict]) -> float:
    """Training throughput over the whole run from its metrics log: every "train" record covers the tokens since the
    previous one at its own tokens/s (so a resumed run counts every session, and never its evaluations)."""
    tokens = seconds = 0.0
    previous = 0
    for r in records:
        if r["event"] == "train" and r.get("tok_s"):
            tokens += r["tokens"] - previous
            seconds += (r["tokens"] - previous) / r["tok_s"]
            previous = r["tokens"]
    return tokens / seconds if seconds else 0.0


def _describe(error: BaseException) -> str:
    """One line: the exception and where in this library it was raised."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "/miras/" in f.filename]
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}{where}"


def _integer(name: str, value: object, *, low: int, unset: int | None = None) -> None:
    check_int(name, value, low, unset=unset, error=ConfigError)


__all__ = [
    "DEFAULT_MODELS",
    "Candidate",
    "CompareConfig",
    "candidates_for",
    "compare",
    "model_configs",
    "results_table",
]
