"""A checkpoint's files and folder reach the disk before the renames that publish them (miras/io_atomic.py)."""

from __future__ import annotations

import json
import os

import torch

import miras.io_atomic as io_atomic
from miras.config import ModelConfig
from miras.models import MirasLM
from miras.train import save_checkpoint
from miras.train.optim import WarmupCosine, param_groups

TINY = dict(hidden_size=32, num_heads=2, num_hidden_layers=1, chunk_size=16)


def _journal(monkeypatch) -> list[tuple[str, str]]:
    """Records ("fsync", path) and ("replace", destination) in the order they happen."""
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(src, dst):
        events.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(io_atomic.os, "fsync", recording_fsync)
    monkeypatch.setattr(io_atomic.os, "replace", recording_replace)
    return events


def test_checkpoint_is_fsynced_before_it_is_published(tmp_path, monkeypatch):
    model = MirasLM(ModelConfig.from_size("tiny", vocab_size=300, **TINY))
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(2, 10, 0.1))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {}, "model": {}}))
    events = _journal(monkeypatch)
    final = save_checkpoint(run, model, optimizer, scheduler, {"step": 3})

    tmp = str(run / "checkpoint-tmp")
    publish = events.index(("replace", str(final)))
    synced_before = {path for kind, path in events[:publish] if kind == "fsync"}
    # every file of the checkpoint, then its folder, are on disk before the rename (the fd still names checkpoint-tmp)
    assert {os.path.join(tmp, name) for name in os.listdir(final)} | {tmp} <= synced_before, events
    latest = events.index(("replace", str(run / "latest")))
    assert publish < latest
    # the run folder is synced after the checkpoint's rename (before `latest` can name it) and after `latest`'s
    assert ("fsync", str(run)) in events[publish:latest] and events[-1] == ("fsync", str(run)), events
    pointer_tmp = [p for kind, p in events[publish:latest] if kind == "fsync" and p.endswith(".tmp")]
    assert len(pointer_tmp) == 1 and os.path.basename(pointer_tmp[0]).startswith(".latest.")
    assert (run / "latest").read_text() == "checkpoint-0000003\n"
    assert not (run / "checkpoint-tmp").exists() and not list(run.glob(".latest.*"))
