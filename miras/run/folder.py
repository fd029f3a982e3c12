"""The run folder: where a run's config, metrics log, figure, tokenizer and checkpoints live.

    config.json      {"train": TrainConfig, "model": ModelConfig}, resolved (seq_len, val_data, paths); a resume
                     writes the flags it changed; the time budget's plan is in metrics.jsonl and the checkpoints
    metrics.jsonl    one JSON object per event: {"event": "train" | "eval" | "pace" | "final", "step": ..., ...}
    loss.png         train and validation loss against step
    tokenizer/       the tokenizer (see miras.data.tokenizer)
    train.lock       while `miras train` writes the folder: its owner (see lock.py)
    latest, checkpoint-NNNNNNN/   see checkpoint.py

A Hugging Face folder (`miras convert to-hf`) also has a config.json, with model_type "miras"; `is_hf_folder` tells
the two apart without importing transformers.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Callable

from miras.io_atomic import write_text_atomic
from miras.run.lock import RunLock

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"
TOKENIZER_DIR = "tokenizer"
HF_MODEL_TYPE = "miras"  # a Hugging Face folder's config.json names it (miras.hf.MODEL_TYPE)


def is_hf_folder(path: str | os.PathLike) -> bool:
    """Whether `path` is a Hugging Face folder of a Miras model: its config.json has model_type "miras" (a run
    folder's config.json has none)."""
    config = Path(path) / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("model_type") == HF_MODEL_TYPE


def as_umask_allows(folder: Path) -> None:
    """Give the files under `folder` the permissions the user's umask asks for: safetensors (0.8) writes its files
    0600 whatever the umask, so checkpoints would be unreadable to the rest of a group sharing a run folder."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o666 & ~mask)


def new_run_dir(out_dir: str, preset: str, locks: contextlib.ExitStack, notice: Callable[[str], None]) -> Path:
    """Create the folder of a fresh run, `out_dir` or runs/<timestamp>-<preset> when it is empty, and take its lock
    (lock.py) into `locks`. A folder in use by another run, or that already holds a run, is refused (continue
    the latter with --resume instead)."""
    if out_dir:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(path, notice)  # first: a folder in use is named as such, with its owner
        if (path / CONFIG_FILE).exists():
            lock.release()
            raise ValueError(f"{path} already holds a run; continue it with --resume {path} or pick another")
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = Path("runs") / f"{stamp}-{preset}"
        suffix = 1
        while path.exists():  # two runs started in the same second
            suffix += 1
            path = Path("runs") / f"{stamp}-{preset}-{suffix}"
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(path, notice)
    locks.enter_context(lock)
    return path


def write_config(run_dir: Path, train: dict, model: dict) -> None:
    write_text_atomic(run_dir / CONFIG_FILE, json.dumps({"train": train, "model": model}, indent=2) + "\n")


def read_config(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{run_dir}: not a run folder (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run's config is a JSON object, got {type(config).__name__}")
    return config


class MetricsLog:
    """Append-only metrics.jsonl; each line is flushed as written, so a killed run keeps its log."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / METRICS_FILE

    def append(self, event: str, **values: object) -> dict:
        record = {"event": event, **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return record

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_after(self, step: int) -> list[dict]:
        """Drop the events after `step` (a resumed run repeats them from its checkpoint) and the "final" summary (a
        resumed run ends with its own); returns those kept. A line cut short by a kill mid-write is dropped too."""
        kept = []
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("step", 0) <= step and record.get("event") != "final":
                    kept.append(record)
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept
