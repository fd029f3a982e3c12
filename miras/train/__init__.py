"""Training: `TrainConfig` (every knob of a run), `train(config)` (runs or resumes one) and the checkpoint format.

`python -m miras.train [flags]` is the same as `miras train [flags]`.
"""

from miras.ops.torch_workarounds import saved_tensors_kept
from miras.train import loop
from miras.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from miras.train.config import ConfigError, TrainConfig, resume_config
from miras.train.loop import TrainResult, evaluate, train_step


def train(config: TrainConfig) -> TrainResult:
    """loop.train (its docstring) with torch's donated buffers off while it runs: `config.compile` compiles the model,
    and torch.compile gives wrong gradients with them on (miras/ops/torch_workarounds.py)."""
    with saved_tensors_kept():
        return loop.train(config)


__all__ = [
    "CheckpointError",
    "ConfigError",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "latest_checkpoint",
    "load_checkpoint",
    "resume_config",
    "save_checkpoint",
    "train",
    "train_step",
]
