"""The run folder: its format, read and written by everyone who works with a run (the trainer writes it; evaluation,
conversion and the command line read it). Below the trainer, so that reading a run never imports training code.

- folder.py: what a run folder holds (config.json, metrics.jsonl, loss.png, tokenizer/), creating one, and telling it
  apart from a Hugging Face folder (`is_hf_folder`);
- checkpoint.py: finding and reading checkpoints (`load_trained`, `resolve_checkpoint`, ...); the trainer writes them
  (miras.train.checkpoint);
- lock.py: one writer per run folder (`train.lock`).
"""

from miras.run.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_model_weights,
    load_trained,
    resolve_checkpoint,
)
from miras.run.folder import CONFIG_FILE, TOKENIZER_DIR, MetricsLog, is_hf_folder, read_config, write_config

__all__ = [
    "CONFIG_FILE",
    "TOKENIZER_DIR",
    "CheckpointError",
    "MetricsLog",
    "is_hf_folder",
    "latest_checkpoint",
    "load_model_weights",
    "load_trained",
    "read_config",
    "resolve_checkpoint",
    "write_config",
]
