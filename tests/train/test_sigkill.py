"""SIGKILL at the moments that matter (during a step, while a checkpoint's files are written, before its folder is
renamed, before `latest` names it) and at random ones: `latest` always names a complete checkpoint, the next run
takes over the dead run's lock, and the run resumed after every kill ends bit-identical to an uninterrupted one."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from miras.cli import main  # noqa: E402
from miras.run.checkpoint import LATEST, MODEL_FILE, STATE_JSON, STATE_TENSORS, TMP_DIR  # noqa: E402
from tests.train.test_cli import TINY_FLAGS  # noqa: E402
from tests.train.test_train import grammar_text, train_losses  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# `miras train` with one function stalled at its n-th call: it prints "@fault" and sleeps until the test kills it.
CHILD = """
import sys, time
import torch
import miras.train.checkpoint as checkpoint
from miras.cli import main

where, n = sys.argv[1], int(sys.argv[2])
owner, name = {"update": (torch.optim.AdamW, "step"), "files": (checkpoint, "save_file"),
               "rename": (checkpoint, "publish_folder"), "latest": (checkpoint, "write_text_atomic")}[where]
real, calls = getattr(owner, name), []

def stalled(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
        print("@fault", flush=True)
        time.sleep(600)
    return real(*args, **kwargs)

setattr(owner, name, stalled)
sys.exit(main(sys.argv[3:]))
"""


def _killed_at(where: str, n: int, args: list[str]) -> str:
    """Run `miras train ARGS` in a subprocess, SIGKILL it at the n-th call of `where`; returns what it printed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, where, str(n), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    out = []
    for line in child.stdout:
        out.append(line)
        if line == "@fault\n":
            child.send_signal(signal.SIGKILL)
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL, "".join(out)
    return "".join(out)


def _latest_is_complete(run: Path) -> int:
    """Checks that `latest` names a complete, loadable checkpoint; returns its step."""
    checkpoint = run / (run / LATEST).read_text().strip()
    load_file(str(checkpoint / MODEL_FILE))
    load_file(str(checkpoint / STATE_TENSORS))
    return json.loads((checkpoint / STATE_JSON).read_text())["counters"]["step"]


def _killed_at_random(args: list[str], run: Path, seed: int) -> bool:
    """Run `miras train ARGS` in a subprocess and SIGKILL it at a random moment one or two checkpoints after the
    current one; returns whether it was killed (False: it finished first)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    rng = random.Random(seed)
    target = f"checkpoint-{_latest_is_complete(run) + rng.randint(1, 2):07d}\n"
    child = subprocess.Popen(
        [sys.executable, "-m", "miras", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    while child.poll() is None and (run / LATEST).read_text() < target:
        time.sleep(0.002)
    time.sleep(rng.uniform(0.0, 0.05))  # within the next step or save (each takes tens of ms here)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert child.returncode in (0, -signal.SIGKILL)
    return child.returncode == -signal.SIGKILL


def _uninterrupted(tmp_path: Path) -> tuple[list[str], Path]:
    """The flags of a 12-step run saving every step, and the folder of that run done without interruption."""
    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    common = [
        "--data",
        str(data),
        "--val-data",
        str(data),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY_FLAGS,
        "--max-steps",
        "12",
        "--save-every",
        "1",
        "--log-every",
        "1",
    ]
    full = tmp_path / "full"
    assert main(["train", *common, "--out-dir", str(full)]) == 0
    return common, full


def _finish_and_compare(run: Path, full: Path) -> None:
    """Resume `run` to its end: weights, AdamW moments, RNG states and every logged loss equal `full`'s, bit for bit."""
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _latest_is_complete(run) == 12
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000012"]
    assert not (run / "train.lock").exists()
    for name in (MODEL_FILE, STATE_TENSORS):
        ours, theirs = (load_file(str(r / "checkpoint-0000012" / name)) for r in (run, full))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert train_losses(run) == train_losses(full) and len(train_losses(run)) == 12


def test_sigkill_during_a_step_and_a_save_then_resume_is_exact(tmp_path):
    common, full = _uninterrupted(tmp_path)
    run = tmp_path / "run"
    # During the 4th step's update: steps 1-3 are saved.
    _killed_at("update", 4, ["train", *common, "--out-dir", str(run)])
    assert _latest_is_complete(run) == 3
    # Resumed at 3; during the 2nd save (step 5), with model.safetensors written and train_state not yet.
    out = _killed_at("files", 4, ["train", "--resume", str(run)])
    assert "taking over a stale lock" in out  # the killed run's lock
    assert _latest_is_complete(run) == 4 and os.listdir(run / TMP_DIR) == [MODEL_FILE]
    _finish_and_compare(run, full)


@pytest.mark.slow
def test_sigkill_before_a_save_is_published_and_at_random_moments(tmp_path):
    """The other stages of a save, then random moments with a save every step."""
    common, full = _uninterrupted(tmp_path)
    run = tmp_path / "run"
    # The save of step 2 has all its files in checkpoint-tmp, not yet renamed.
    _killed_at("rename", 2, ["train", *common, "--out-dir", str(run)])
    assert _latest_is_complete(run) == 1 and sorted(os.listdir(run / TMP_DIR)) == sorted(
        [MODEL_FILE, STATE_TENSORS, STATE_JSON]
    )
    # Resumed at 1; step 3's folder is renamed into place, but `latest` still names step 2's.
    _killed_at("latest", 2, ["train", "--resume", str(run)])
    assert _latest_is_complete(run) == 2 and (run / "checkpoint-0000003").is_dir()
    kills = 0
    for seed in range(5):
        if _latest_is_complete(run) >= 9:
            break
        kills += _killed_at_random(["train", "--resume", str(run)], run, seed)
        _latest_is_complete(run)
    assert kills >= 2
    _finish_and_compare(run, full)
