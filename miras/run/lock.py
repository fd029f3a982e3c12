"""One writer per run folder. `miras train` holds `<run folder>/train.lock` from the moment it claims the folder (a new
run, or --resume) until it returns. A second `miras train` on the same folder is refused with one line that names the
folder and the owner's pid, instead of two processes racing on the same checkpoints and logs.

The lock is `fcntl.flock` on the file, and the file records the owner (pid, host, start time) for that message. The
kernel releases a flock when its process dies, SIGKILL included, so a crashed run never blocks the next one. Its file
still holds the dead owner's pid, and the next run takes it over with a notice. A clean exit deletes the file. flock
works across processes of one machine, and across machines on NFS (Linux emulates it there with NFS locks). On a
file system that cannot lock files at all, the run says so in one line and trains unguarded.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Callable

LOCK_FILE = "train.lock"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # flock's errors on a file system without locks


class RunInUse(ValueError):
    """Another process holds the run folder's lock; the message names the folder and the owner."""


class RunLock:
    """The lock of one run folder, held from `acquire` until `release` (or the end of a `with` block)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike, notice: Callable[[str], None] = print) -> "RunLock":
        """Take the lock of `run_dir` (an existing folder), or raise RunInUse. A lock file left by a process that died
        is taken over, and `notice` gets one line about it."""
        path = Path(run_dir) / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _describe(_read(fd))
                os.close(fd)
                raise RunInUse(
                    f"{Path(run_dir)} is in use by another miras train ({owner}); wait for it to finish, "
                    f"or stop it, before training in this folder"
                ) from None
            except OSError as e:
                if e.errno not in NO_LOCKS:
                    os.close(fd)
                    raise
                # A file system without locks (some FUSE mounts): train anyway, but say that nothing guards the folder.
                notice(
                    f"{path}: this file system cannot lock files ({e.strerror}), so nothing stops a second "
                    "miras train from writing to this folder at the same time"
                )
                break
            # The owner before us deletes the file and only then unlocks it. If we opened the file before it was
            # deleted, our lock is on a file no other process will find, so try again.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read(fd)
        if stale:
            notice(f"{path}: taking over a stale lock; its owner ({_describe(stale)}) ended without releasing it")
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode("utf-8"), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # before unlocking: see acquire
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()


def _describe(text: str) -> str:
    """'pid 123 on host h, since ...' from a lock file's content (whatever it holds)."""
    try:
        owner = json.loads(text)
        return f"pid {owner['pid']} on host {owner['host']}, since {owner['since']}"
    except (ValueError, TypeError, KeyError):
        return f"lock file content {text[:80]!r}" if text else "its pid is not written yet"
