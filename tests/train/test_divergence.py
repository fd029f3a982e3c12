"""A run whose loss or gradient norm goes non-finite skips a bounded number of steps, then stops with one line and
exit status 3. It never saves non-finite weights, and what it saved before stays (miras/train/divergence.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import miras  # noqa: E402
import miras.train.loop as loop  # noqa: E402
from miras.cli import main  # noqa: E402
from miras.train import TrainConfig, train, train_step  # noqa: E402
from miras.train.config import RESUMABLE  # noqa: E402
from miras.train.divergence import Diverged  # noqa: E402
from tests.ops.test_host_syncs import READS  # noqa: E402
from tests.train.test_cli import TINY_FLAGS  # noqa: E402
from tests.train.test_train import data, tiny_config  # noqa: E402, F401  (data: a fixture)


def _all_finite(checkpoint: Path) -> bool:
    tensors = {
        name: t
        for file in ("model.safetensors", "train_state.safetensors")
        for name, t in load_file(str(checkpoint / file)).items()
    }
    return all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


def test_a_diverging_run_skips_then_stops_with_one_line(tmp_path, data, capsys):  # noqa: F811
    """--lr 10000: the loss goes NaN within a few steps. Before the fix this died inside the op ("eta must lie in
    (0.0, inf)"); now the trainer catches it."""
    run = tmp_path / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--val-data",
        str(data),
        "--out-dir",
        str(run),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY_FLAGS,
        "--lr",
        "10000",
        "--max-steps",
        "20",
        "--save-every",
        "1",
        "--max-skipped-steps",
        "1",
    ]
    assert main(args) == 3
    out, err = capsys.readouterr()
    skips = [line for line in out.splitlines() if "skipped its update" in line]
    assert len(skips) == 1, out
    skipped_at = int(
        re.match(r"step (\d+): loss nan, gradient norm nan: skipped its update \(1 of at most 1 ", skips[0])[1]
    )
    assert "likely cause: a learning rate too high for this model (--lr 10000, --warmup-steps 2)" in skips[0]
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    last_good = run / f"checkpoint-{skipped_at:07d}"  # saved after the skipped step: finite weights, step counted
    assert err == (
        f"miras train: error: step {skipped_at + 1}: loss nan, gradient norm nan after 1 skipped step "
        "(--max-skipped-steps 1): the run diverged and stops; likely cause: a learning rate too high for "
        "this model (--lr 10000, --warmup-steps 2); remedy: start a new run with a lower --lr (e.g. 1000) "
        f"or more --warmup-steps; last good checkpoint: {last_good} (kept)\n"
    )
    assert (run / "latest").read_text().strip() == last_good.name
    assert sorted(p.name for p in run.glob("checkpoint-*")) == [last_good.name]
    assert _all_finite(last_good)
    counters = json.loads((last_good / "train_state.json").read_text())["counters"]
    assert counters["step"] == skipped_at and counters["skipped"] == 1

    # The skip count is part of the run: a resume has none left, stops at once and keeps the checkpoint.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"miras train: error: step {skipped_at + 1}: loss nan") and err.count("\n") == 1
    assert err.endswith(f"last good checkpoint: {last_good} (kept)\n")
    assert (run / "latest").read_text().strip() == last_good.name and _all_finite(last_good)


def test_non_finite_weights_are_never_saved(tmp_path, data, monkeypatch):  # noqa: F811
    """An update that overflows the weights although its loss and gradient norm were finite: the next save is
    refused and the run stops; the earlier checkpoint stays."""
    real_step = loop.train_step

    def overflowing_step(model, *args, **kwargs):
        result = real_step(model, *args, **kwargs)
        if len(calls) == 2:  # the third step's update overflows
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")
        calls.append(1)
        return result

    calls: list[int] = []
    monkeypatch.setattr(loop, "train_step", overflowing_step)
    with pytest.raises(
        Diverged,
        match=r"^step 4: the weights are not finite after an update \(last loss nan\), so "
        r"this checkpoint is not saved and the run stops; .*last good checkpoint: "
        r".*checkpoint-0000002 \(kept\)$",
    ):
        train(tiny_config(tmp_path, data, save_every=2))
    run = tmp_path / "run"
    assert (run / "latest").read_text().strip() == "checkpoint-0000002" and _all_finite(run / "checkpoint-0000002")
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-0000002"]


def test_a_step_brings_values_to_the_host_once(monkeypatch):
    """The loss and the gradient norm come to the host together: one read per step by miras's code, whatever the
    number of micro-batches (AdamW's own reads of its CPU step counters are not ours)."""
    model = miras.MirasLM(
        miras.ModelConfig.from_size(
            "tiny", vocab_size=300, hidden_size=32, num_heads=2, num_hidden_layers=1, chunk_size=16
        )
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    batch = torch.randint(0, 300, (2, 33))
    micro = [(batch[:, :-1], batch[:, 1:])] * 3
    package = str(Path(miras.__file__).parent)
    reads: list[str] = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            if sys._getframe(1).f_code.co_filename.startswith(package):
                reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    loss, grad_norm = train_step(model, optimizer, scheduler, micro, grad_clip=1.0)
    monkeypatch.undo()
    assert reads == ["tolist"]
    assert isinstance(loss, float) and loss > 0 and grad_norm > 0

    with torch.no_grad():  # a non-finite loss: the update is skipped, weights and AdamW moments stay
        next(model.parameters()).view(-1)[0] = float("nan")
    before = [(p.detach().clone(), optimizer.state[p]["exp_avg"].clone()) for p in model.parameters()]
    loss, grad_norm = train_step(model, optimizer, scheduler, micro, grad_clip=1.0)
    assert loss != loss  # NaN
    for (weight, moment), p in zip(before, model.parameters()):
        assert torch.equal(weight.nan_to_num(), p.detach().nan_to_num())
        assert torch.equal(moment, optimizer.state[p]["exp_avg"])
    assert scheduler.last_epoch == 2  # the step still counts


def test_max_skipped_steps_is_checked_and_resumable():
    with pytest.raises(ValueError, match=r"^max_skipped_steps: must be >= 0, got -1"):
        TrainConfig(max_skipped_steps=-1)
    assert TrainConfig().max_skipped_steps == 3
    assert "max_skipped_steps" in RESUMABLE  # a run stopped by a one-off overflow can be resumed past it
