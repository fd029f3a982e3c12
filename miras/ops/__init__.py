"""The Miras memory op: `chunk_miras` (fast, chunk-parallel) and `naive_recurrent_miras` (reference), one contract."""

from miras.ops.chunk import chunk_miras
from miras.ops.debug import debug_checks
from miras.ops.naive import naive_recurrent_miras, recurrent_step
from miras.ops.state import MirasState, init_state
from miras.ops.torch_workarounds import keep_saved_tensors

# Read when a graph compiles, so it holds for every compile after `import miras`: without it a torch bug gives wrong
# gradients when the op is compiled (torch_workarounds.py).
keep_saved_tensors()

__all__ = ["MirasState", "chunk_miras", "debug_checks", "init_state", "naive_recurrent_miras", "recurrent_step"]
