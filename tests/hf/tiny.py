"""Tiny Miras models and run folders for the Hugging Face integration tests."""

from pathlib import Path

import torch

from miras.config import ModelConfig
from miras.data import Tokenizer
from miras.models import MirasLM

# Three model families: a memory-only model, a hybrid whose sliding window (4) is shorter than the test sequences,
# and a Transformer++. chunk_size 4 and odd prompt lengths leave the memory state in the middle of a chunk.
FAMILIES = {
    "moneta": dict(preset="moneta"),
    "yaad-hybrid-swa": dict(preset="yaad", hybrid_attention_every=2, attention_window=4),
    "transformer": dict(preset="transformer"),
}
VOCAB = 61


def model_config(family: str = "moneta", **changes) -> ModelConfig:
    fields = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_heads=2, intermediate_size=64, chunk_size=4,
        gate_rank=4, max_position_embeddings=64,
    )  # fmt: skip
    return ModelConfig(**{**fields, **FAMILIES[family], **changes})


def native_model(config: ModelConfig, seed: int = 0) -> MirasLM:
    torch.manual_seed(seed)
    return MirasLM(config).eval()


def small_tokenizer() -> Tokenizer:
    texts = ["The memory writes each key to its value at test time.", "Moneta, Yaad and Memora: <|endoftext|> ok"]
    return Tokenizer.train(texts * 20, vocab_size=300)


def make_run(path: Path, tokenizer: Tokenizer, config: ModelConfig, step: int = 3) -> MirasLM:
    """A run folder as `miras train` leaves it (config, tokenizer, a checkpoint at `step`) holding an untrained
    model; returns the model."""
    from miras.run.folder import TOKENIZER_DIR, write_config
    from miras.train.checkpoint import save_checkpoint
    from miras.train.config import TrainConfig

    model = native_model(config)
    train = TrainConfig(preset=config.preset, seq_len=16, vocab_size=tokenizer.vocab_size, max_steps=step)
    path.mkdir(parents=True)
    write_config(path, train.to_dict(), config.to_dict())
    tokenizer.save(path / TOKENIZER_DIR)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    save_checkpoint(path, model, optimizer, scheduler, {"step": step})
    return model
