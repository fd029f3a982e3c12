import json

import pytest
import torch

from miras.eval.capacity import ETA_SCALES, N_PAIRS, main, recall_accuracy, recall_reads
from miras.layers.miras_layer import eta_max
from miras.memory.architecture import memory_forward
from miras.ops import chunk_miras, init_state
from miras.presets import get


@pytest.fixture(autouse=True)
def one_thread():
    # The tests share 2 cores with other work; one thread keeps them from fighting over both.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("chunk_size", [64, 1])
def test_delta_rule_recalls_few_pairs_at_full_step(chunk_size):
    """The exact delta rule with η = 1 stores each unit key's value exactly; 8 random keys in D = 64 are nearly
    orthogonal (|cos| ~ 0.125), so the later writes barely disturb the earlier ones."""
    assert recall_accuracy(get("gated_deltanet"), 8, 1.0, chunk_size=chunk_size) >= 0.95


def test_linear_attention_recalls_when_pairs_are_few():
    assert recall_accuracy(get("linear_attention"), 8, 1.0) >= 0.95


def test_mlp_memory_is_at_chance_when_nothing_is_written():
    """With a tiny step the MLP reads its random initial function of the key: no better than guessing among N."""
    spec, n = get("ttt_mlp"), 16
    acc = recall_accuracy(spec, n, 1e-6 * eta_max(spec, 64), trials=16)
    assert acc <= 1 / n + 0.1, acc


def test_reads_see_the_memory_the_writes_left():
    """The query tokens' own writes are negligible: every read equals the memory after the N writes alone
    (a separate call), applied to the asked key."""
    spec, n, trials = get("ttt_mlp"), 16, 2
    eta = eta_max(spec, 64)
    reads, values, order = recall_reads(spec, n, eta, trials=trials, seed=3)
    # the same draws as recall_reads: keys, values, order, then the initial state, from one generator
    g = torch.Generator().manual_seed(3)
    keys = torch.nn.functional.normalize(torch.randn(trials, n, 64, generator=g), dim=-1)
    torch.randn(trials, n, 64, generator=g)
    torch.rand(trials, n, generator=g)
    state = init_state(spec, trials, 1, 64, 64, generator=g)
    k = keys[:, :, None]
    _, final = chunk_miras(
        k,
        k,
        values[:, :, None],
        torch.full((trials, n, 1), eta),
        None,
        spec=spec,
        initial_state=state,
        output_final_state=True,
    )
    asked = torch.gather(keys, 1, order[..., None].expand(-1, -1, 64))
    direct = memory_forward(spec, final.memory, asked[:, None])[:, 0]
    torch.testing.assert_close(reads, direct, atol=1e-5, rtol=1e-5)


def test_deterministic_for_a_seed():
    spec = get("titans")
    a = recall_reads(spec, 8, 0.01, seed=5)
    b = recall_reads(spec, 8, 0.01, seed=5)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[1], recall_reads(spec, 8, 0.01, seed=6)[1])


def test_command_writes_tables_and_dot_bias_is_step_invariant(tmp_path, capsys):
    """A dot-bias memory starts at W = 0 and writes η v kᵀ: η scales the whole memory and cannot change which value
    a read is closest to, so every η of the grid gives the same accuracies."""
    assert main(["--presets", "linear_attention", "--chunks", "64", "--trials", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "capacity.json").read_text())
    rows = result["rows"]
    assert [r["eta_scale"] for r in rows] == list(ETA_SCALES)
    assert all(set(r["accuracy"]) == {str(n) for n in N_PAIRS} for r in rows)
    assert all(r["accuracy"] == rows[0]["accuracy"] for r in rows)
    assert rows[0]["accuracy"]["4"] == 1.0
    assert result["forgetting"] == []  # linear attention does not forget
    text = (tmp_path / "capacity.md").read_text()
    assert "| linear_attention |" in text and "## Accuracy (%), chunk 64" in text
    assert "capacity.md" in capsys.readouterr().out
