"""Training: `TrainConfig` (every knob of a run), `train(config)` (runs or resumes one) and the checkpoint format.

`python -m miras.train [flags]` is the same as `miras train [flags]`.
"""

from miras.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from miras.train.config import ConfigError, TrainConfig, resume_config
from miras.train.divergence import Diverged
from miras.train.evaluation import evaluate
from miras.train.loop import TrainResult, train
from miras.train.step import train_step

__all__ = [
    "CheckpointError",
    "ConfigError",
    "Diverged",
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
