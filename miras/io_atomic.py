"""Durable atomic writes: after a crash a reader finds the old content or the complete new content, never a partial
or empty file.

`os.replace` alone is atomic for a running system, but not after a power loss or kernel crash. The rename can reach
the disk before the data it publishes, which leaves a renamed file that is empty or short. The rename itself can also
still sit in the folder's page cache. So, as SQLite and PyTorch's distributed checkpointing do:
1. write the new content under a temporary name in the same folder and fsync it;
2. os.replace it over the final name;
3. fsync the folder, which makes the rename durable.
`publish_folder` does the same for a whole folder (a checkpoint): it fsyncs every file in it and the folder itself,
renames the folder, and fsyncs the parent.

Measured cost: miras/train/README.md ("Durable checkpoints").
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable, TypeVar

T = TypeVar("T")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if os.path.isdir(path) else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], T]) -> T:
    """Replace `path` with what `write(f)` writes to the binary file `f` (streamed: a token cache can be larger than
    memory); returns write's result. Readers see the old file or the new one, also after a crash (module docstring).
    The temporary name is unique, so concurrent writers of the same path do not mix their bytes."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            result = write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)
    return result


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """`write_file_atomic` of `data`."""
    write_file_atomic(path, lambda f: f.write(data))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """`write_bytes_atomic` of `text` in UTF-8."""
    write_bytes_atomic(path, text.encode("utf-8"))


def publish_folder(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the complete folder `tmp` to `final` (a path that must not exist), durably: every file under `tmp` and
    every folder in it are fsynced before the rename, and the parent folder after it."""
    tmp, final = Path(tmp), Path(final)
    folders = [tmp]
    for path in sorted(tmp.rglob("*")):
        if path.is_dir():
            folders.append(path)
        else:
            fsync_path(path)
    for folder in reversed(folders):  # deepest first: a folder's entries, then the entry that names it
        fsync_path(folder)
    os.replace(tmp, final)
    fsync_path(final.parent)
