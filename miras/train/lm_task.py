"""The language-modelling task of the trainer (any TrainConfig data but "mqar"): the tokenizer, the token streams,
batches of (seq_len + 1)-token windows, evaluation on windows spread evenly over each validation set next to a
unigram baseline (evaluation.py), and a sample at the end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from miras.config import ModelConfig
from miras.data import (
    CORPORA,
    TokenBatches,
    Tokenizer,
    held_out_split,
    iter_documents,
    load_corpus,
    token_stream,
    window_tokens,
)
from miras.metrics import perplexity
from miras.models import MirasLM
from miras.run.folder import TOKENIZER_DIR
from miras.train.config import ConfigError, TrainConfig
from miras.train.distributed import full_model_state, is_sharded
from miras.train.evaluation import eval_windows, evaluate, unigram_log_probs
from miras.train.parts import Run

SAMPLE_TEMPERATURE = 0.8
SAMPLE_TOP_K = 50


def prepare(
    config: TrainConfig, source: str | Path | None, model_config: ModelConfig | None, progress: bool
) -> tuple[TrainConfig, ModelConfig, LMTask]:
    """(config, model config, task). A resumed run, or a fresh one whose folder `source` rank 0 already made, takes
    the tokenizer from its folder (and the configs, given); otherwise the tokenizer is trained (or loaded) here and
    seq_len and val_data are resolved."""
    if source:
        tokenizer = Tokenizer.load(Path(source) / TOKENIZER_DIR)
    else:
        tokenizer = train_tokenizer(config)
        # The vocabulary is the tokenizer's, whoever resolved the rest of the model.
        model_config = dataclasses.replace(config.resolved_model(), vocab_size=tokenizer.vocab_size)
        config = config.replace(
            seq_len=model_config.max_position_embeddings if config.seq_len == -1 else config.seq_len,
            val_data=config.val_data or (config.data, "wiki"),
        )
    cache_dir = config.cache_dir or None
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
    return config, model_config, LMTask(config, tokenizer, train_tokens, val_sets)


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


class LMTask:
    """Token batches and evaluations of a language-modelling run (the loop's task, see parts.Task)."""

    def __init__(
        self, config: TrainConfig, tokenizer: Tokenizer, train_tokens: np.ndarray, val_sets: dict[str, np.ndarray]
    ) -> None:
        self.config, self.tokenizer, self.train_tokens = config, tokenizer, train_tokens
        self.val_sets = val_sets  # by data spec; the first is the primary one (periodic evals)
        self.primary = config.val_data[0]
        self.batches = TokenBatches(train_tokens, config.batch_size, config.seq_len, config.seed)
        self.period_starts = eval_windows(
            len(val_sets[self.primary]), config.seq_len, config.eval_batches * config.batch_size * config.seq_len
        )

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / TOKENIZER_DIR)

    def describe(self) -> str:
        return (
            f"data: {self.config.data} train {len(self.train_tokens):,} tokens; validation "
            + ", ".join(f"{spec} {len(t):,}" for spec, t in self.val_sets.items())
            + f"; tokenizer {self.tokenizer.kind}, vocab {self.tokenizer.vocab_size}"
        )

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batches.batch(index)

    def periodic_eval(self, run: Run, step: int) -> tuple[dict, str]:
        """The primary set's loss on its periodic windows: ({"val_loss", "val_ppl"}, the log line)."""
        acc = self._evaluate(run, self.val_sets[self.primary], self.period_starts)
        return {"val_loss": acc.mean_nll, "val_ppl": acc.perplexity}, (
            f"val loss {acc.mean_nll:.4f}, ppl {acc.perplexity:.1f}"
        )

    def final_eval(self, run: Run, step: int) -> tuple[dict, dict, list[str]]:
        """Every validation set next to the unigram baseline, and a sample: (evals by set, the "final" record's
        fields, log lines)."""
        log_probs = unigram_log_probs(self.train_tokens, self.tokenizer.vocab_size)
        evals, lines = {}, []
        for spec, tokens in self.val_sets.items():
            starts = eval_windows(len(tokens), self.config.seq_len, self.config.final_eval_tokens)
            acc = self._evaluate(run, tokens, starts)
            _, labels = window_tokens(tokens, starts, self.config.seq_len)
            unigram_nll = -float(log_probs[labels.numpy()].sum())
            evals[spec] = {
                "loss": acc.mean_nll,
                "ppl": acc.perplexity,
                "tokens": acc.num_tokens,
                "unigram_ppl": perplexity(unigram_nll, labels.numel()),
            }
            lines.append(
                f"validation {spec} ({acc.num_tokens:,} tokens): loss {acc.mean_nll:.4f}, perplexity "
                f"{acc.perplexity:.1f}; unigram baseline perplexity {evals[spec]['unigram_ppl']:.1f}"
            )
        primary = evals[self.primary]
        fields = {
            "val_loss": primary["loss"],
            "val_ppl": primary["ppl"],
            "unigram_ppl": primary["unigram_ppl"],
            "evals": evals,
            "sample": sample(run, self.tokenizer),
        }
        return evals, fields, lines

    def _evaluate(self, run: Run, tokens: np.ndarray, starts: np.ndarray):
        return evaluate(
            run.model, tokens, starts, self.config.seq_len, run.local_batch, run.device, run.autocast, run.distributed
        )


def sample(run: Run, tokenizer: Tokenizer) -> str:
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
    prompt = torch.tensor([[tokenizer.eos_id]], device=device)
    was_training = model.training
    model.eval()
    ids = model.generate(
        prompt, config.sample_tokens, temperature=SAMPLE_TEMPERATURE, top_k=SAMPLE_TOP_K, generator=generator
    )
    model.train(was_training)
    return tokenizer.decode(ids[0, 1:].tolist())
