"""`miras train`: one flag per TrainConfig field (`--hidden-size` sets `hidden_size`), grouped as in the dataclass.

Only the flags given on the command line reach TrainConfig; the rest keep its defaults, or, with --resume, the
values the run was started with.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from miras.train.config import DEFAULT_MINUTES, RESUMABLE, TrainConfig

# field -> help, in groups; every TrainConfig field appears exactly once (tests check it).
GROUPS: dict[str, dict[str, str]] = {
    "model": {
        "preset": "memory design: moneta, yaad, memora, a Table-1 model (titans, gated_deltanet, ...) or transformer",
        "size": "named size: tiny, small (CPU), 170m, 340m, 780m, 1.3b",
        "hidden_size": "override the size's model width",
        "num_hidden_layers": "override the size's number of blocks",
        "num_heads": "override the size's number of heads",
        "head_dim": "per-head width (default: hidden size / heads)",
        "chunk_size": "override the memory's chunk size (tokens whose gradients share one anchor)",
    },
    "data": {
        "data": "training text: 'sotu' (embedded State of the Union corpus) or a .txt / .jsonl file, folder or glob; "
        "or 'mqar': multi-query associative recall with a vocabulary of --vocab-size (no tokenizer, no --val-data)",
        "val_data": "validation sets, the first one primary: a corpus name (its validation split), the --data spec "
        "(its held-out last 5%%) or another path (all of it); default: the --data held-out part, then wiki",
        "tokenizer": "bpe (trained on --data: sotu's training addresses, or all of a file spec, held-out part included) or gpt2",
        "vocab_size": "vocabulary of the trained BPE",
        "cache_dir": "token cache folder (default ~/.cache/miras/tokens)",
        "mqar_kv_pairs": "--data mqar: key-value pairs per sequence (4 x pairs <= --seq-len)",
        "mqar_train_examples": "--data mqar: training set size (-1: max steps x batch size, at most 100000)",
        "mqar_test_examples": "--data mqar: test set size, disjoint from the training set",
        "mqar_power_a": "--data mqar: power law of the query gaps (small: queries close to their keys; 1: uniform)",
    },
    "optimization": {
        "seq_len": "tokens per training sequence (-1: the size's context, 256 for tiny)",
        "batch_size": "sequences per micro-batch, over all processes (torchrun): each takes its share",
        "grad_accum": "micro-batches per optimizer step",
        "lr": "peak learning rate (AdamW)",
        "min_lr_ratio": "final learning rate as a fraction of --lr (cosine decay)",
        "warmup_steps": "linear warm-up steps",
        "max_steps": "optimizer steps (-1, the default: as many as fit in --max-minutes)",
        "max_minutes": "training time budget, evaluations included; the speed of the first steps sets the step "
        "count, at most --max-steps (-1: no budget; default: 8 without --max-steps, no budget with it)",
        "weight_decay": "AdamW weight decay on weight matrices (none on norms, gates, biases, initial memory)",
        "betas": "AdamW betas",
        "grad_clip": "clip the gradient norm to this (-1: no clipping)",
        "max_skipped_steps": "steps with a non-finite loss or gradient norm to skip (no update) before the run "
        "stops with exit status 3; the count is per run, across resumes",
    },
    "evaluation and checkpoints": {
        "log_every": "steps between training-loss records",
        "eval_every": "steps between validation evaluations (-1: only at the end)",
        "eval_batches": "batches per periodic evaluation",
        "final_eval_tokens": "tokens per validation set in the final evaluation (-1: the whole set)",
        "save_every": "steps between checkpoints (-1: only at the end)",
        "sample_tokens": "tokens to generate at the end",
        "seed": "seed of the initialization and the batch order",
    },
    "run": {
        "out_dir": "run folder (default runs/<timestamp>-<preset>)",
        "resume": "continue the run in this folder from its latest checkpoint; only "
        + ", ".join("--" + f.replace("_", "-") for f in RESUMABLE)
        + " may be given with it",
        "device": "auto, cpu or cuda",
        "dtype": "auto (float32 on CPU, bf16 autocast on CUDA), float32 or bfloat16",
        "threads": "CPU threads (default here 0: the first steps probe 1 thread against all cores and keep the faster; "
        "-1: all cores this process may use, the library's default)",
        "compile": "torch.compile the model for training; its memory ops compile their chunk steps (8 chunks per call), "
        "outside the model graph (compile time independent of the sequence length; ~1.5 min cold on 2 cores)",
        "tf32": "CUDA only: run float32 matmuls on TF32 tensor cores (10-bit mantissa), the memory op's included: it "
        "computes in float32 under bf16 autocast; off, they are exact float32",
        "tensorboard": "also write TensorBoard logs to <run folder>/tensorboard",
        "progress": "show progress bars",
        "parallel": "with several processes (torchrun --nproc-per-node N): ddp (a model replica per process) or "
        "fsdp (FSDP2: parameters, gradients and optimizer state sharded per block); a single process ignores it",
    },
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a language model (no flags: a tiny Moneta on the embedded corpus, under 10 minutes on 2 CPU cores)",
        description="Train a Miras language model. With no flags it trains a tiny Moneta on State of the Union "
        "addresses for about 8 minutes and prints its validation perplexity, a unigram baseline's and a sample.",
    )
    defaults = TrainConfig()
    for title, helps in GROUPS.items():
        group = parser.add_argument_group(title)
        for name, text in helps.items():
            _add_flag(group, name, getattr(defaults, name), text)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from miras.train import resume_config, train  # torch and the model load only when a run starts
    from miras.train.divergence import EXIT_CODE, Diverged

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in names}
    if given.get("resume"):
        config = resume_config(given["resume"], **given)
    else:
        # The command's default is a time budget (TrainConfig's is a step count): with neither flag, 8 minutes.
        given.setdefault("max_steps", -1)
        given.setdefault("threads", 0)  # the command probes (TrainConfig's -1 does not)
        if given["max_steps"] == -1:
            given.setdefault("max_minutes", DEFAULT_MINUTES)
        config = TrainConfig(**given)
        config = config.replace(model=config.resolved_model())  # the preset at its size, as a ModelConfig
    start = time.perf_counter()
    try:
        result = train(config)
    except Diverged as e:  # one line (step, loss, cause, remedy, last good checkpoint), not a traceback
        if e.is_main:
            print(f"miras train: error: {e}", file=sys.stderr)
        return EXIT_CODE
    if not result.is_main:  # under torchrun, rank 0 reports
        return 0
    minutes, seconds = divmod(time.perf_counter() - start, 60)
    if "accuracy" in next(iter(result.evals.values())):  # --data mqar
        scores = f"MQAR test accuracy {result.accuracy:.3f}"
    else:
        scores = f"validation perplexity {result.val_ppl:.1f} (unigram baseline {result.unigram_ppl:.1f})"
    print(f"{scores}; run folder {result.run_dir}; {int(minutes)}m{seconds:02.0f}s")
    return 0


def _add_flag(group: argparse._ArgumentGroup, name: str, default: object, text: str) -> None:
    flag = "--" + name.replace("_", "-")
    shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
    if "default" not in text:  # texts that explain their default themselves keep it
        text += f" (default: {shown if shown != '' else 'none'})"
    kwargs = {"default": argparse.SUPPRESS, "help": text}
    if isinstance(default, bool):
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif name == "betas":
        group.add_argument(flag, type=float, nargs=2, metavar=("BETA1", "BETA2"), **kwargs)
    elif name == "val_data":
        group.add_argument(flag, nargs="+", metavar="SET", **kwargs)
    else:
        group.add_argument(flag, type=type(default), metavar=name.upper(), **kwargs)
