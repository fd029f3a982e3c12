"""One writer per run folder (miras/run/lock.py): a second one is refused with the owner's pid, and a lock left
by a dead process is taken over with a notice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest

from miras.run.lock import LOCK_FILE, RunInUse, RunLock

HOLDER = (
    "import sys, time\nfrom miras.run.lock import RunLock\nRunLock.acquire(sys.argv[1])\n"
    "print('locked', flush=True)\ntime.sleep(600)\n"
)


@contextlib.contextmanager
def lock_held_elsewhere(folder):
    """A separate process that holds `folder`'s lock until the block ends (then it is SIGKILLed: no clean release)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_second_writer_is_refused_and_a_dead_ones_lock_taken_over(tmp_path):
    with lock_held_elsewhere(tmp_path) as holder:
        with pytest.raises(
            RunInUse,
            match=rf"^{tmp_path} is in use by another miras train \(pid {holder.pid} on "
            r"host .*, since .*\); wait for it to finish, or stop it",
        ):
            RunLock.acquire(tmp_path)
    notices = []
    with RunLock.acquire(tmp_path, notices.append):  # the holder was killed: its lock file stays, stale
        assert len(notices) == 1
        assert notices[0].startswith(
            f"{tmp_path / LOCK_FILE}: taking over a stale lock; its owner (pid {holder.pid} on host "
        )
        assert notices[0].endswith(") ended without releasing it")
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(RunInUse, match=f"pid {os.getpid()}"):  # a second open file in this process: refused too
            RunLock.acquire(tmp_path)
    assert not (tmp_path / LOCK_FILE).exists()  # a clean release deletes the file
    with RunLock.acquire(tmp_path, notices.append):
        assert len(notices) == 1  # nothing stale after a clean release


def test_a_stale_lock_file_of_a_dead_pid(tmp_path):
    """A lock file written by a process that no longer exists (no flock held on it) does not block."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": pid, "host": "elsewhere", "since": "yesterday"}))
    notices = []
    with RunLock.acquire(tmp_path, notices.append):
        assert notices == [
            f"{tmp_path / LOCK_FILE}: taking over a stale lock; its owner (pid {pid} on host "
            "elsewhere, since yesterday) ended without releasing it"
        ]
    (tmp_path / LOCK_FILE).write_text("garbage")
    with RunLock.acquire(tmp_path, notices.append):
        assert notices[-1].endswith("its owner (lock file content 'garbage') ended without releasing it")


def test_sigkill_releases_the_lock(tmp_path):
    """The kernel drops a flock when its process dies: a SIGKILLed owner never blocks the next run."""
    with lock_held_elsewhere(tmp_path) as holder:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        with RunLock.acquire(tmp_path, lambda line: None) as lock:
            assert lock.path.is_file()


def test_a_file_system_without_locks_is_named_not_fatal(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    notices = []
    with RunLock.acquire(tmp_path, notices.append):
        assert notices == [
            f"{tmp_path / LOCK_FILE}: this file system cannot lock files (No locks available), so "
            "nothing stops a second miras train from writing to this folder at the same time"
        ]
    assert not (tmp_path / LOCK_FILE).exists()
