"""Reading a run folder's checkpoints: which one is the latest, a model's weights, a trained model with its tokenizer.

The files of a checkpoint (written by miras.train.checkpoint, nothing in them is unpickled):

    latest                          "checkpoint-0000200": the complete checkpoint to resume from
    checkpoint-0000200/
        model.safetensors           model weights only (what `miras generate` and evaluation need)
        train_state.safetensors     optimizer moments and RNG states
        train_state.json            step, counters, optimizer hyper-parameters, scheduler state

This module reads them; evaluation, conversion and the command line load models through it without the trainer.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model
from torch import nn

from miras.config import ModelConfig
from miras.data import Tokenizer
from miras.models import MirasLM
from miras.run.folder import TOKENIZER_DIR, is_hf_folder, read_config

LATEST = "latest"
TMP_DIR = "checkpoint-tmp"
MODEL_FILE = "model.safetensors"
STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


class CheckpointError(ValueError):
    """A run folder without a usable checkpoint; the message names the folder."""


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:07d}"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint folder `latest` names; CheckpointError if there is none."""
    run_dir = Path(run_dir)
    pointer = run_dir / LATEST
    if not pointer.is_file():
        raise CheckpointError(
            f"{run_dir}: no checkpoint to resume from (no '{LATEST}' file); the run stopped before "
            "its first save: delete the folder to start it again"
        )
    path = run_dir / pointer.read_text(encoding="utf-8").strip()
    if not (path / MODEL_FILE).is_file():
        raise CheckpointError(f"{run_dir}: '{LATEST}' names {path.name}, which has no {MODEL_FILE}")
    return path


def resumable_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint a resume continues from: the latest, with its optimizer and scheduler state; CheckpointError
    if there is none (a run converted from a Hugging Face folder has weights only)."""
    path = latest_checkpoint(run_dir)
    missing = [name for name in (STATE_JSON, STATE_TENSORS) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"{path}: no training state ({', '.join(missing)} missing), so the run cannot be "
            "resumed; "
            "a run converted from a Hugging Face folder has weights only: train a new run from it "
            "instead"
        )
    return path


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, Path]:
    """A run folder (its latest checkpoint) or a checkpoint folder inside one -> (run folder, checkpoint folder)."""
    path = Path(path)
    if is_hf_folder(path):
        raise CheckpointError(
            f"{path}: a Hugging Face folder, not a run folder; load it with transformers, or convert "
            f"it first: miras convert from-hf {path} RUN_FOLDER"
        )
    if (path / MODEL_FILE).is_file():
        return path.parent, path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run or checkpoint folder")
    return path, latest_checkpoint(path)


def load_model_weights(model: nn.Module, path: str | os.PathLike) -> Path:
    """Load a checkpoint's weights (a run folder's latest, or a checkpoint folder's) into `model`, strictly.
    Returns the checkpoint folder."""
    _, path = resolve_checkpoint(path)
    device = next(model.parameters()).device
    try:
        load_model(model, str(path / MODEL_FILE), strict=True, device=str(device))
    except SafetensorError as e:
        raise CheckpointError(
            f"{path / MODEL_FILE}: not a readable safetensors file ({e}); the checkpoint is damaged"
        ) from None
    except RuntimeError as e:  # names the missing / unexpected / mis-shaped tensors
        raise CheckpointError(f"{path / MODEL_FILE} does not fit this model: {e}") from None
    return path


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[MirasLM, Tokenizer]:
    """A trained model (eval mode) and its tokenizer from a run folder or one of its checkpoint folders."""
    run_dir, checkpoint = resolve_checkpoint(path)
    if not (run_dir / TOKENIZER_DIR).is_dir():
        raise CheckpointError(
            f"{run_dir}: no {TOKENIZER_DIR}/ folder; a run folder holds the tokenizer its model was trained with"
        )
    try:
        model_config = ModelConfig.from_dict(read_config(run_dir)["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / 'config.json'}: no valid model config ({type(e).__name__}: {e})") from None
    model = MirasLM(model_config).to(device)
    load_model_weights(model, checkpoint)
    return model.eval(), Tokenizer.load(run_dir / TOKENIZER_DIR)
