"""The memory probe reads what the layer's op would get: Huber's regime at initialization follows delta_init."""

from __future__ import annotations

import pytest
import torch

from miras.config import ModelConfig
from miras.eval import memory_probe
from miras.eval.memory_probe import COLUMNS, probe_memory
from miras.experiments.mqar import mqar_model_config, train_mqar
from miras.models import MirasLM


def _yaad(**fields) -> MirasLM:
    torch.manual_seed(0)
    return MirasLM(
        ModelConfig(preset="yaad", hidden_size=32, num_hidden_layers=2, num_heads=2, vocab_size=64, **fields)
    )


def test_huber_regime_at_initialization_follows_delta_init():
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))
    head_dim = 16
    low, default = probe_memory(_yaad(delta_init=1.0), ids), probe_memory(_yaad(), ids)
    assert len(low) == len(default) == 2 and all(set(row) == set(COLUMNS) for row in low + default)
    for row in low:  # δ = 1 below every error: all on the l1 side, whose write is δ·Sign(e), of norm δ√V
        assert row["δ"] == pytest.approx(1.0, abs=0.05) and row["outside"] == 1.0
        assert row["‖u‖/‖e‖"] == pytest.approx(head_dim**0.5 / row["‖e‖"], rel=0.1)
    for row in default:  # δ = 2·√head_dim above every error (‖e‖ near √(2·head_dim)): the l2 write, u = e
        assert row["δ"] == pytest.approx(2 * head_dim**0.5, rel=0.01) and row["‖e‖"] < row["δ"]
        assert row["outside"] == 0.0 and row["‖u‖/‖e‖"] == pytest.approx(1.0)
    titans = MirasLM(ModelConfig(preset="titans", hidden_size=32, num_hidden_layers=1, vocab_size=64))
    (row,) = probe_memory(titans, ids)
    assert set(row) == {"‖e‖", "‖v‖", "η", "‖u‖/‖e‖"} and row["‖u‖/‖e‖"] == pytest.approx(1.0)  # l2: u = e, no δ


def test_cli_probes_a_finished_mqar_run_and_names_a_bad_folder(tmp_path, capsys):
    config = mqar_model_config("yaad", 16, vocab_size=32, seq_len=16)
    kwargs = dict(seq_len=16, num_kv_pairs=2, steps=2, batch_size=4, lr=1e-3, seed=0, test_examples=8, threads=1)
    train_mqar(config, run_dir=tmp_path / "run", **kwargs)
    before = torch.random.get_rng_state()
    assert memory_probe.main([str(tmp_path / "run"), "--examples", "8"]) == 0
    assert torch.equal(torch.random.get_rng_state(), before)  # the probe's seeding stays inside it
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("| run | layer | ‖e‖") and len(out) == 2 + 2  # header, rule, one row per layer
    assert memory_probe.main([str(tmp_path / "run"), "--init", "--examples", "8"]) == 0
    assert "| init run | 1 |" in capsys.readouterr().out
    assert memory_probe.main([str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
