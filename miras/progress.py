"""Progress bars that suit where they are read: tqdm's redrawn bar on a terminal, and on a pipe or a file (nohup, a
CI log, `> log`) one plain line every LINE_INTERVAL seconds. tqdm redraws with carriage returns, which a terminal
overwrites but a log keeps: a run of minutes becomes one line of thousands of bars."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm as _plain_tqdm
from tqdm.auto import tqdm as _auto_tqdm

LINE_INTERVAL = 10.0  # seconds between lines when the stream is not a terminal
# tqdm.auto picks its notebook widget inside Jupyter (which has no terminal, and needs no lines); elsewhere its
# asyncio flavour of the plain bar.
_NOTEBOOK = any(c.__module__ == "tqdm.notebook" for c in _auto_tqdm.__mro__)


class _Lines:
    """A text stream for tqdm that writes each redraw as a line of its own: every carriage-return-separated piece of
    what tqdm writes that is not blank (tqdm clears a bar by overwriting it with spaces) becomes one line."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        for piece in text.split("\r"):
            if piece.strip():
                self._stream.write(piece.rstrip() + "\n")

    def flush(self) -> None:
        self._stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(*, file: TextIO | None = None, **kwargs) -> _plain_tqdm:
    """tqdm(**kwargs) writing to `file` (default: stderr, as tqdm): on a terminal as tqdm draws it (tqdm.auto, so a
    notebook gets its widget), elsewhere a line at most every LINE_INTERVAL seconds, plus the first and the last."""
    stream = sys.stderr if file is None else file
    if _NOTEBOOK or _is_terminal(stream):
        return _auto_tqdm(file=file, **kwargs)
    kwargs.setdefault("mininterval", LINE_INTERVAL)
    return _plain_tqdm(file=_Lines(stream), **kwargs)
