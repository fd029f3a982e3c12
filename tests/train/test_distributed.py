"""Multi-process training on CPU (gloo) through torchrun: 2 processes with a global batch of 4 (2 each) take the same
steps as one process with a batch of 4, for DDP and FSDP2, and checkpoints move between world sizes.

Each torchrun launch costs ~10 s (two fresh Python processes importing torch), so the launches are few: one DDP run,
one FSDP run killed after its step-2 checkpoint, and one FSDP resume of a single-process checkpoint.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import contextlib
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from miras.data import TokenBatches  # noqa: E402
from miras.run.checkpoint import MODEL_FILE, STATE_TENSORS, load_trained  # noqa: E402
from miras.train import ConfigError, TrainConfig, train  # noqa: E402
from miras.train.config import changed_fields  # noqa: E402
from miras.train.distributed import Distributed  # noqa: E402
from miras.train.setup import start_run  # noqa: E402
from tests.train.test_train import grammar_text, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RTOL = 1e-4  # 2 processes sum the same numbers in another order: losses agree to ~1e-7 in practice
LAUNCH_TIMEOUT = 300  # a rank left waiting in a collective would otherwise hang the test for gloo's 30 minutes

# `miras train` under torchrun with two test hooks, set by environment variables:
# TEST_KILL_AT_BATCH=k: every rank raises KeyboardInterrupt when it asks for batch k (a run killed mid-way; batch k
# is micro-batch k % grad_accum of step k // grad_accum);
# TEST_RANK1_OUT_OF_TIME=1: rank 1's clock says the time budget is spent from the start while rank 0's does not, so
# the run only completes if every rank follows rank 0's decision.
WORKER = """
import os
import sys

from miras.cli import main
from miras.data import TokenBatches
from miras.train.pace import Pacer

kill_at = int(os.environ.get("TEST_KILL_AT_BATCH", "-1"))
if kill_at >= 0:
    batch = TokenBatches.batch

    def batch_or_die(self, step):
        if step == kill_at:
            raise KeyboardInterrupt("killed")
        return batch(self, step)

    TokenBatches.batch = batch_or_die
if os.environ.get("TEST_RANK1_OUT_OF_TIME") and os.environ["RANK"] == "1":
    Pacer.out_of_time = lambda self: True
sys.exit(main(sys.argv[1:]))
"""


def cli_flags(config: TrainConfig) -> list[str]:
    """The `miras train` flags that give `config`."""
    args = []
    for name, value in changed_fields(config).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, list):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args


def torchrun(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """2 processes on this machine (--standalone: a local rendezvous on a free port), gloo on the CPU."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    with subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=LAUNCH_TIMEOUT)
        except subprocess.TimeoutExpired:
            # SIGTERM: torchrun stops its workers (they run in sessions of their own, out of reach of a group kill)
            process.terminate()
            stdout, stderr = process.communicate(timeout=60)
            pytest.fail(f"torchrun still running after {LAUNCH_TIMEOUT} s (ranks deadlocked?):\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> dict[str, list[float]]:
    """Per-step training losses and periodic validation losses of a run folder."""
    events = records(run_dir)
    return {
        "train": [r["loss"] for r in events if r["event"] == "train"],
        "eval": [r["val_loss"] for r in events if r["event"] == "eval"],
    }


def checkpoint_tensors(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    """Model weights and optimizer moments of a checkpoint (not the RNG states, which are rank 0's own)."""
    folder = run_dir / f"checkpoint-{step:07d}"
    tensors = {**load_file(str(folder / MODEL_FILE)), **load_file(str(folder / STATE_TENSORS))}
    return {k: v for k, v in tensors.items() if not k.startswith("rng.")}


def assert_same_run(run_dir: Path, reference: Path, step: int) -> None:
    """Same losses step by step, same final validation, same weights and optimizer state (within RTOL)."""
    got, want = losses(run_dir), losses(reference)
    assert len(got["train"]) == len(want["train"]) and len(got["eval"]) == len(want["eval"]), (got, want)
    for kind in ("train", "eval"):
        assert got[kind] == pytest.approx(want[kind], rel=RTOL), kind
    final, final_ref = records(run_dir)[-1], records(reference)[-1]
    assert final["event"] == final_ref["event"] == "final"
    assert final["val_loss"] == pytest.approx(final_ref["val_loss"], rel=RTOL)
    assert_same_checkpoint(run_dir, reference, step)


def assert_same_checkpoint(run_dir: Path, reference: Path, step: int) -> None:
    """Same tensor names, each tensor within RTOL of the reference's in norm. Element by element they may differ more:
    Adam's update m / sqrt(v) is ~lr whatever the gradient's size, so for a near-zero gradient the rounding noise of
    another summation order moves a weight by a visible fraction of lr."""
    a, b = checkpoint_tensors(run_dir, step), checkpoint_tensors(reference, step)
    assert a.keys() == b.keys()
    for name in a:
        error = torch.linalg.vector_norm(a[name].double() - b[name].double())
        assert error <= RTOL * torch.linalg.vector_norm(b[name].double()) + 1e-12, name


def kill_at_batch(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Make the run raise KeyboardInterrupt when it asks for batch `index` (step * grad_accum + micro-batch)."""
    original = TokenBatches.batch

    def batch_or_die(self, asked):
        if asked == index:
            raise KeyboardInterrupt("killed")
        return original(self, asked)

    monkeypatch.setattr(TokenBatches, "batch", batch_or_die)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The worker script, the config, and one-process reference runs: the whole run (4 steps, checkpoints every 2)
    and the same run killed after its step-2 checkpoint (left untouched; tests resume copies of it)."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    worker = root / "worker.py"
    worker.write_text(WORKER, encoding="utf-8")
    # 2 blocks, so that FSDP has two block units besides the root; 2 micro-batches per step, so that DDP skips the
    # all-reduce of the first; eval windows (2 batches of 4) split over the ranks.
    config = tiny_config(
        root,
        data,
        num_hidden_layers=2,
        grad_accum=2,
        max_steps=4,
        save_every=2,
        eval_every=2,
        out_dir=str(root / "reference"),
    )
    reference = train(config)
    with pytest.MonkeyPatch.context() as monkeypatch:
        kill_at_batch(monkeypatch, 2 * config.grad_accum)  # the first batch of step 3
        with pytest.raises(KeyboardInterrupt):
            train(config.replace(out_dir=str(root / "reference-step2")))
    return root, worker, config, reference, root / "reference-step2"


def test_ddp_two_processes_match_one(setup):
    root, worker, config, reference, _ = setup
    run = root / "ddp"
    # Rank 1's clock says stop before the first step: the run completes only because rank 0's decision is everyone's.
    done = torchrun(
        [str(worker), "train", *cli_flags(config.replace(out_dir=str(run)))], env={"TEST_RANK1_OUT_OF_TIME": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, reference.run_dir, step=4)
    assert records(run)[-1]["sample"] == reference.sample
    # Rank 0 alone reports; the other rank's output has none of it.
    assert done.stdout.count("validation perplexity") == 1 and "distributed: 2 processes (ddp)" in done.stdout


def test_fsdp_checkpoint_resumes_in_one_process(setup, tmp_path):
    """An FSDP run killed after its step-2 checkpoint: the checkpoint gathered from the shards equals the one-process
    one, and one process resumes it to the reference's end."""
    _, worker, config, reference, step2 = setup
    run = tmp_path / "fsdp"
    killed = torchrun(
        [str(worker), "train", *cli_flags(config.replace(out_dir=str(run), parallel="fsdp"))],
        env={"TEST_KILL_AT_BATCH": str(2 * config.grad_accum)},
    )
    assert killed.returncode != 0 and "interrupted" in killed.stderr, killed.stderr[-3000:]
    assert (run / "latest").read_text().strip() == "checkpoint-0000002"
    assert_same_checkpoint(run, step2, 2)
    model, _ = load_trained(run)  # what `miras generate` reads
    assert not model.training
    resumed = train(TrainConfig(resume=str(run), threads=1, progress=False))
    assert resumed.step == 4
    assert_same_run(run, reference.run_dir, step=4)


def test_one_process_checkpoint_resumes_on_two_with_fsdp(setup, tmp_path):
    """A one-process run killed after its step-2 checkpoint continues under torchrun with FSDP (every rank loads the
    full state and keeps its shard) exactly as the uninterrupted one-process run did."""
    _, _, _, reference, step2 = setup
    run = tmp_path / "single"
    shutil.copytree(step2, run)
    done = torchrun(["-m", "miras.train", "--resume", str(run), "--parallel", "fsdp", "--no-progress"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(run, reference.run_dir, step=4)
    assert records(run)[-1]["sample"] == reference.sample


def test_parallel_is_validated():
    with pytest.raises(ConfigError) as info:
        TrainConfig(parallel="zero3")
    assert info.value.field == "parallel" and "'zero3' is not one of ddp, fsdp" in str(info.value)


def test_global_batch_must_split_over_the_processes(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    config = tiny_config(tmp_path, data, batch_size=4)
    with pytest.raises(ConfigError) as info:
        start_run(config, Distributed(rank=0, world_size=3), contextlib.ExitStack())
    assert info.value.field == "batch_size" and "does not split evenly over 3 processes" in str(info.value)
    assert not (tmp_path / "run").exists()


def test_tensorboard_writes_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    result = train(tiny_config(tmp_path, data, max_steps=4, eval_every=2, tensorboard=True))
    logs = result.run_dir / "tensorboard"
    assert list(logs.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(logs))
    events.Reload()
    assert {"train/loss", "train/lr", "train/tok_s", "val/loss"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("val/loss")] == [0, 2, 4]
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses(result.run_dir)["train"])
