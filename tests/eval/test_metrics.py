import math

import pytest
import torch
import torch.nn.functional as F

from miras.metrics import (
    IGNORE_INDEX,
    NLLAccumulator,
    bits_per_byte,
    per_position_loss,
    perplexity,
    token_accuracy,
    token_nll,
)
from miras.plots import plot_accuracy_vs_width, plot_loss_curves, plot_niah_heatmap, plot_position_loss


def test_uniform_prediction_has_perplexity_vocab_size():
    vocab = 50
    logits = torch.zeros(2, 7, vocab)
    labels = torch.randint(vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    nll = token_nll(logits, labels)
    assert torch.allclose(nll, torch.full((2, 7), math.log(vocab)))
    assert perplexity(nll.sum().item(), 14) == pytest.approx(vocab)


def test_perplexity_and_bits_per_byte_by_hand():
    assert perplexity(0.0, 10) == 1.0
    assert perplexity(10 * math.log(4), 10) == pytest.approx(4.0)
    # 100 ln 2 nats = 100 bits over 50 bytes.
    assert bits_per_byte(100 * math.log(2), 50) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="num_tokens"):
        perplexity(1.0, 0)
    with pytest.raises(ValueError, match="num_bytes"):
        bits_per_byte(1.0, 0)


def test_token_nll_matches_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    labels = torch.randint(11, (3, 5), generator=g)
    labels[0, :2] = IGNORE_INDEX
    nll = token_nll(logits, labels)
    assert torch.all(nll[0, :2] == 0)
    mean = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
    assert nll.sum() / (labels != IGNORE_INDEX).sum() == pytest.approx(mean.item(), rel=1e-6)


def _one_hot_logits(predictions, vocab=4):
    return F.one_hot(torch.tensor(predictions), vocab).float() * 10


def test_token_accuracy_ignores_unscored_positions():
    logits = _one_hot_logits([[1, 2, 3], [0, 0, 1]])
    labels = torch.tensor([[1, IGNORE_INDEX, 0], [IGNORE_INDEX, IGNORE_INDEX, 1]])
    assert token_accuracy(logits, labels) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no scored positions"):
        token_accuracy(logits, torch.full((2, 3), IGNORE_INDEX))


def test_per_position_loss():
    nll = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = per_position_loss(nll, mask)
    assert out[:2].tolist() == [2.0, 2.0] and math.isnan(out[2])


def test_accumulator_streams_batches_of_different_lengths():
    g = torch.Generator().manual_seed(1)
    batches = []
    for t in (4, 6):
        logits = torch.randn(2, t, 9, generator=g)
        labels = torch.randint(9, (2, t), generator=g)
        labels[1, 0] = IGNORE_INDEX
        batches.append((logits, labels))
    acc = NLLAccumulator()
    for logits, labels in batches:
        acc.update(logits, labels, num_bytes=10)

    nll = [token_nll(lo, la) for lo, la in batches]
    masks = [la != IGNORE_INDEX for _, la in batches]
    num_tokens = sum(int(m.sum()) for m in masks)
    nll_sum = sum(n.sum().item() for n in nll)
    assert acc.num_tokens == num_tokens == 18 and acc.num_bytes == 20
    assert acc.mean_nll == pytest.approx(nll_sum / num_tokens)
    assert acc.perplexity == pytest.approx(math.exp(nll_sum / num_tokens))
    assert acc.bits_per_byte == pytest.approx(nll_sum / (20 * math.log(2)))
    correct = sum(int(((lo.argmax(-1) == la) & m).sum()) for (lo, la), m in zip(batches, masks))
    assert acc.accuracy == pytest.approx(correct / num_tokens)
    # Positions 0-3 average over both batches, positions 4-5 over the longer one only.
    position = acc.position_loss()
    assert position.shape == (6,)
    expected_0 = (nll[0][0, 0] + nll[1][0, 0]).item() / 2  # row 1 of each batch is unscored at position 0
    assert position[0].item() == pytest.approx(expected_0)
    assert position[5].item() == pytest.approx(nll[1][:, 5].mean().item())


def test_accumulator_add_sums():
    acc = NLLAccumulator()
    with pytest.raises(ValueError, match="no tokens"):
        acc.mean_nll
    acc.add(10 * math.log(8), 5, num_bytes=15)
    acc.add(10 * math.log(8), 15, num_bytes=15)
    assert acc.perplexity == pytest.approx(8.0)
    assert acc.bits_per_byte == pytest.approx(20 * 3 / 30)
    with pytest.raises(ValueError, match="update"):
        acc.accuracy


PLOTS = {
    "accuracy_vs_width": lambda p: plot_accuracy_vs_width(
        {"attention": {64: 1.0, 128: 1.0}, "moneta": {64: 0.4, 128: 0.8, 256: 0.95}}, p
    ),
    "niah_heatmap": lambda p: plot_niah_heatmap({(1024, 0.0): 1.0, (1024, 0.5): 0.5, (2048, 0.0): 0.25}, p),
    "position_loss": lambda p: plot_position_loss({"a": [5.0, 4.0, math.nan, 3.0], "b": [5.0, 3.5, 3.0, 2.0]}, p),
    "loss_curves": lambda p: plot_loss_curves({"train": [(0, 5.0), (10, 4.0), (20, 3.5)], "val": [(20, 3.7)]}, p),
}


@pytest.mark.parametrize("name", PLOTS)
def test_plot_writes_png(name, tmp_path):
    path = tmp_path / "figs" / f"{name}.png"
    PLOTS[name](path)
    PLOTS[name](path)  # overwriting goes through the same atomic replace
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
