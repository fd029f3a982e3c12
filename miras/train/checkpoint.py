"""Writing and restoring training checkpoints, in safe formats only: nothing is unpickled when loading, so a
checkpoint from anywhere cannot run code.

A run folder holds at most one complete checkpoint, named by its step, and a `latest` pointer:

    latest                          "checkpoint-0000200": the complete checkpoint to resume from
    checkpoint-0000200/
        model.safetensors           model weights only (what `miras generate` and evaluation need)
        train_state.safetensors     optimizer moments and RNG states
        train_state.json            step, counters, optimizer hyper-parameters, scheduler state

Writes are atomic at every level: files go to `checkpoint-tmp/`, which is renamed to its final name, and only then is
`latest` replaced (write to a temp file, os.replace). A run killed at any moment leaves `latest` naming a complete
checkpoint (or no `latest` at all, before the first save). They are durable too: the files and their folder are
fsynced before the rename that publishes them, and the run folder after it (miras/io_atomic.py), so that a power
loss or kernel crash cannot leave `latest` naming empty files. The cost is in miras/train/README.md.

A distributed run saves the same files, with full (unsharded) tensors gathered to rank 0, so any number of processes
can resume it; see distributed.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from miras.io_atomic import publish_folder, write_text_atomic
from miras.run.checkpoint import (  # noqa: F401  (the readers are re-exported: older code imports them here)
    LATEST,
    MODEL_FILE,
    STATE_JSON,
    STATE_TENSORS,
    TMP_DIR,
    CheckpointError,
    checkpoint_name,
    latest_checkpoint,
    load_model_weights,
    load_trained,
    resolve_checkpoint,
    resumable_checkpoint,
)
from miras.run.folder import as_umask_allows
from miras.train.distributed import (
    full_model_state,
    full_optimizer_state,
    is_sharded,
    load_full_state,
    tied_aliases,
)


def save_checkpoint(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    counters: dict,
) -> Path:
    """Write a checkpoint for `counters["step"]`, point `latest` at it, delete the previous one; returns its path.

    counters: JSON-safe training progress (step, tokens, elapsed seconds, ...), given back by `load_checkpoint`.
    model: the unwrapped module (not a DDP wrapper). In a distributed run every rank must call this: a sharded model's
    state is gathered from all ranks, rank 0 writes, and the others wait until the checkpoint is complete.
    """
    run_dir = Path(run_dir)
    name = checkpoint_name(counters["step"])
    final = run_dir / name
    model_state, optimizer_state = full_model_state(model), full_optimizer_state(model, optimizer)
    if model_state is not None:
        _write_checkpoint(run_dir, final, model, model_state, optimizer_state, scheduler, counters)
    if dist.is_initialized():
        dist.barrier()  # nobody reads or resumes a checkpoint that is still being written
    return final


def _write_checkpoint(
    run_dir: Path,
    final: Path,
    model: nn.Module,
    model_state: dict,
    optimizer_state: dict,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    counters: dict,
) -> None:
    tmp = run_dir / TMP_DIR
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a run killed while saving
    tmp.mkdir(parents=True)
    # safetensors refuses tensors that share storage, so a tied lm_head is stored once, under the embedding's name,
    # and named in the metadata (as safetensors' save_model does); load_model accepts either name.
    aliases = tied_aliases(model)
    tensors = {k: v.contiguous() for k, v in model_state.items() if k not in aliases}
    save_file(tensors, str(tmp / MODEL_FILE), metadata=aliases or None)
    opt_tensors, opt_meta = _split_optimizer(optimizer_state)
    save_file({**opt_tensors, **_rng_states()}, str(tmp / STATE_TENSORS))
    state = {"counters": counters, "optimizer": opt_meta, "scheduler": scheduler.state_dict()}
    (tmp / STATE_JSON).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
    as_umask_allows(tmp)

    name = final.name
    shutil.rmtree(final, ignore_errors=True)  # a save of this step that died before `latest` named it
    publish_folder(tmp, final)  # durable before `latest` can name it
    write_text_atomic(run_dir / LATEST, name + "\n")
    for old in run_dir.glob("checkpoint-*"):
        if old.is_dir() and old.name not in (name, TMP_DIR):
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    run_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict:
    """Restore model, optimizer, scheduler and RNG states from a run's latest checkpoint; returns its counters.

    model: the unwrapped module. In a distributed run every rank calls this and reads the files: replicas load them
    whole, a sharded (FSDP) model keeps its shard of each tensor. The RNG states are rank 0's.
    """
    path = resumable_checkpoint(run_dir)
    try:
        state = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(path / STATE_TENSORS))
    except (json.JSONDecodeError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable training state ({e}); the checkpoint is damaged") from None
    optimizer_state = _with_execution_options(_join_optimizer(tensors, state["optimizer"]), optimizer)
    if is_sharded(model):
        try:
            load_full_state(model, optimizer, load_file(str(path / MODEL_FILE)), optimizer_state)
        except SafetensorError as e:
            raise CheckpointError(f"{path / MODEL_FILE}: not a readable safetensors file ({e})") from None
        except RuntimeError as e:  # names the missing / unexpected / mis-shaped tensors
            raise CheckpointError(f"{path / MODEL_FILE} does not fit this model: {e}") from None
    else:
        load_model_weights(model, path)
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.cpu"])
    # Each GPU this process sees gets its saved state back; a run resumed on fewer GPUs than saved it drops the rest.
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        if f"rng.cuda.{i}" in tensors:
            torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)
    return state["counters"]


def _split_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict -> (its tensors by flat name, everything else as JSON-safe data)."""
    tensors, rest = {}, {}
    for index, entry in state_dict["state"].items():
        rest[str(index)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().contiguous()
            else:
                rest[str(index)][key] = value
    return tensors, {"state": rest, "param_groups": state_dict["param_groups"]}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {int(index): dict(values) for index, values in meta["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state[int(index)][key] = value
    # JSON turned tuples (betas) into lists; optimizers expect what they were built with.
    groups = [
        {k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


# Param-group options that say how this process runs the update, not what training has learned: a run saved by an
# optimizer built on the CPU (fused=None) and resumed on CUDA (fused=True) keeps the resuming optimizer's choice.
# load_state_dict would otherwise replace them with the saved ones (`miras compare` writes its step-0 checkpoints
# on the CPU, so its CUDA runs trained with unfused AdamW).
EXECUTION_OPTIONS = ("fused", "foreach", "capturable", "differentiable")


def _with_execution_options(saved: dict, optimizer: torch.optim.Optimizer) -> dict:
    for group, current in zip(saved["param_groups"], optimizer.param_groups):
        group.update({k: current[k] for k in EXECUTION_OPTIONS if k in current})
    return saved


def _rng_states() -> dict[str, torch.Tensor]:
    states = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return states
