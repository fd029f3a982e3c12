"""Data-parallel training across processes: `torchrun --nproc_per_node=N -m miras.train ...`.

- `Distributed.start` joins the process group that torchrun's environment describes (RANK, WORLD_SIZE, LOCAL_RANK,
  MASTER_ADDR, MASTER_PORT): NCCL with one GPU per process (cuda:LOCAL_RANK), gloo on CPU. Without WORLD_SIZE > 1 (and
  without a group the caller made) it is a single process and every collective below is a no-op.
- `parallelize` wraps the model: DDP (a replica per rank, gradients all-reduced) or FSDP2 (`fully_shard` per block,
  then the root: parameters, gradients and optimizer state sharded across ranks).
- Checkpoints hold full (unsharded) state dicts in the single-process format, so a run can resume on any number of
  processes: `full_model_state` and `full_optimizer_state` gather them to rank 0, `load_full_state` gives every rank
  its part.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from miras.device import resolve_device
from miras.train.config import ConfigError

# Rank 0 alone trains the tokenizer and tokenizes the data (into the shared token cache) while the other ranks wait
# for the run folder. On a large corpus that takes far longer than NCCL's default 10-minute timeout, so the wait goes
# through a separate gloo group with this timeout; the training collectives keep the backend's default.
SETUP_TIMEOUT = datetime.timedelta(hours=6)


def process_device(name: str, local_rank: int | None) -> torch.device:
    """The device of this process: "auto" is CUDA when torch sees a GPU; in a multi-process run a CUDA process uses
    GPU `local_rank` of its node."""
    device = resolve_device(name, "device", error=ConfigError)
    if device.type == "cpu" or local_rank is None:
        return device
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(
            "device",
            f"local rank {local_rank} has no GPU of its own (torch sees "
            f"{torch.cuda.device_count()}); start at most that many processes per node",
        )
    return torch.device("cuda", local_rank)


@dataclass
class Distributed:
    """This process's place in the run. The defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1  # processes on this node, which share its CPU cores
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this object created the process group, so `close` destroys it
    setup_group: object = None  # gloo group with SETUP_TIMEOUT for the wait on rank 0's data preparation

    @classmethod
    def start(cls, device_name: str) -> "Distributed":
        """Join the process group of a torchrun launch (or one the caller already initialized)."""
        joined = dist.is_available() and dist.is_initialized()
        if not joined and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device=process_device(device_name, None))
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        # A group the caller made without torchrun's LOCAL_RANK is taken to span one node.
        local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if joined else "0"))
        device = process_device(device_name, local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL and the default CUDA device are this process's GPU
        if not joined:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        world_size = dist.get_world_size()
        return cls(
            rank=dist.get_rank(),
            world_size=world_size,
            local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world_size)),
            device=device,
            owns_group=not joined,
            setup_group=dist.new_group(backend="gloo", timeout=SETUP_TIMEOUT) if world_size > 1 else None,
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj: object, *, setup: bool = False) -> object:
        """Rank 0's `obj` on every rank (pickled). setup: through the long-timeout group (see SETUP_TIMEOUT)."""
        if not self.enabled:
            return obj
        objects = [obj if self.is_main else None]
        if setup:
            dist.broadcast_object_list(objects, src=0, group=self.setup_group)
        else:
            dist.broadcast_object_list(objects, src=0, device=self.device)
        return objects[0]

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks, in float64."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def mean(self, value: float) -> float:
        return self.sum([value])[0] / self.world_size


# ---------------------------------------------------------------------------------------------------------------
# Wrapping


def parallelize(model: nn.Module, parallel: str, distributed: Distributed) -> nn.Module:
    """The module to train: `model` itself in a single process; a DDP wrapper around it; or, for "fsdp", `model`
    sharded in place (each block one FSDP unit, the embedding, final norm and (tied) head the root's)."""
    if not distributed.enabled:
        return model
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [distributed.device.index] if distributed.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError("parallel", f"fsdp needs FSDP2 (torch >= 2.6); this is torch {torch.__version__}") from None
    # An explicit mesh: the default one is CUDA whenever a GPU is visible, even for a run placed on the CPU.
    mesh = init_device_mesh(distributed.device.type, (distributed.world_size,))
    for block in model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are DTensor shards (FSDP2)."""
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def tied_aliases(model: nn.Module) -> dict[str, str]:
    """{name: the name it shares its parameter with}, e.g. {"lm_head.weight": "embed_tokens.weight"} for tied
    embeddings; the kept name is the one `named_parameters()` reports."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


# ---------------------------------------------------------------------------------------------------------------
# Full state dicts


def _full_options(**changes: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **changes)


def full_model_state(model: nn.Module) -> dict | None:
    """`model`'s state dict with full tensors (on the CPU, for a sharded model): rank 0 gets it, other ranks None. With
    a sharded model every rank must call this (the shards are gathered); `model` is the unwrapped module."""
    if not is_sharded(model):
        # Replicas (or a single process): rank 0's copy is the whole state.
        return model.state_dict() if not dist.is_initialized() or dist.get_rank() == 0 else None
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(model, options=_full_options(cpu_offload=True))  # cpu_offload: to rank 0 only
    return state if dist.get_rank() == 0 else None


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict | None:
    """`optimizer.state_dict()` as a single process holds it (full tensors, parameters numbered in param_groups
    order): rank 0 gets it, other ranks None. Collective like `full_model_state`."""
    if not is_sharded(model):
        return optimizer.state_dict() if not dist.is_initialized() or dist.get_rank() == 0 else None
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_full_options(cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    # get_optimizer_state_dict names the parameters where Optimizer.state_dict numbers them; its param_groups list
    # the names in the optimizer's order, so position = number.
    groups, number = [], {}
    for group in state["param_groups"]:
        first = len(number)
        number.update((name, first + i) for i, name in enumerate(group["params"]))
        groups.append({**group, "params": list(range(first, len(number)))})
    return {"state": {number[name]: entry for name, entry in state["state"].items()}, "param_groups": groups}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict, optimizer_state: dict
) -> None:
    """Load single-process-format state dicts (see `full_optimizer_state`) into a sharded `model` and its optimizer:
    every rank passes the full dicts and keeps its shard. `model_state` may omit tied aliases (model.safetensors
    does)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    model_state = dict(model_state)
    for alias, kept in tied_aliases(model).items():
        if kept in model_state:
            model_state.setdefault(alias, model_state[kept])
    set_model_state_dict(model, model_state, options=_full_options(strict=True))
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    by_name = {
        "state": {order[int(i)]: entry for i, entry in optimizer_state["state"].items()},
        "param_groups": [
            {**saved, "params": [names[id(p)] for p in group["params"]]}
            for saved, group in zip(optimizer_state["param_groups"], optimizer.param_groups)
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_full_options())
