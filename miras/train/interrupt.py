"""Ctrl-C during training: finish the step, save, stop (miras/train/README.md, "Interrupting a run")."""

from __future__ import annotations

import signal
import threading

from tqdm.auto import tqdm


class StopRequest:
    """Ctrl-C (SIGINT) while the loop runs: the step in progress finishes, a checkpoint is saved and the run stops
    with KeyboardInterrupt, so at most the step in flight is lost instead of everything since the last save. A second
    Ctrl-C interrupts at once. Only from the main thread (signal handlers cannot be set elsewhere); with several
    processes rank 0's request stops all of them (the loop broadcasts it)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        self.restore()
        tqdm.write("interrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)")

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
