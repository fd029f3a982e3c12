"""evaluate_ppl: hand-computed perplexity / bits per byte, exact once-only scoring under sliding windows, the position
of each scored prediction in its window, determinism and input errors."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from miras.config import ModelConfig
from miras.eval.ppl import PPLResult, _windows, evaluate_ppl
from miras.models import MirasLM


class ByteTokenizer:
    """ids 0..255 are UTF-8 bytes, 256 is EOS: one token per byte, so bytes are easy to count by hand."""

    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class ConstantLogits(nn.Module):
    """The same logits at every position, whatever the input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


class NextTokenByWindowPosition(nn.Module):
    """Predicts input + 1 (mod vocab) with logit t at window position t, all other logits 0: on tokens
    0, 1, 2, ... the NLL at window position t is f(t) = log(e^t + vocab - 1) - t, so each score reveals where in its
    window the prediction was made."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.unused = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        position = torch.arange(t, dtype=torch.float32).expand(b, t)
        logits.scatter_(2, ((input_ids + 1) % self.vocab)[..., None], position[..., None])
        return SimpleNamespace(logits=logits)

    def nll_at(self, t: int) -> float:
        return math.log(math.exp(t) + self.vocab - 1) - t


def test_uniform_model_has_perplexity_vocab_and_bits_per_byte_log2_vocab():
    text = "héllo wörld ✓ " * 20  # multi-byte characters: bytes != characters
    result = evaluate_ppl(ConstantLogits(torch.zeros(257)), ByteTokenizer(), text, context_len=16, stride=5)
    num_bytes = len(text.encode("utf-8"))
    assert result.num_tokens == num_bytes  # an EOS goes first, so every byte of the text is scored
    assert result.num_bytes == num_bytes
    assert result.perplexity == pytest.approx(257)
    assert result.mean_nll == pytest.approx(math.log(257))
    # One token per byte: bits per byte = bits per token = log2(vocab).
    assert result.bits_per_byte == pytest.approx(math.log2(257))


def test_sliding_windows_by_hand():
    """11 tokens, windows of 4 every 2: (0-3) scores targets 1-4 at positions 0-3, then (2-5), (4-7), (6-9) each
    score their last 2 predictions (positions 2, 3)."""
    model = NextTokenByWindowPosition(vocab=50)
    f = [model.nll_at(t) for t in range(4)]
    result = evaluate_ppl(model, ByteTokenizer(), list(range(11)), context_len=4, stride=2, batch_size=3)
    assert result.num_windows == 4 and result.num_tokens == 10
    assert result.mean_nll == pytest.approx((f[0] + f[1] + f[2] + f[3] + 3 * (f[2] + f[3])) / 10)
    assert result.position_loss == pytest.approx(f)
    assert result.perplexity == pytest.approx(math.exp(result.mean_nll))


def test_disjoint_windows_end_on_the_last_token():
    """10 tokens, context 4, no stride: (0-3), (4-7), then a last window moved back to (5-8) that scores only
    target 9, at its last position, instead of a 1-token window that would predict it from 1 token."""
    model = NextTokenByWindowPosition(vocab=50)
    f = [model.nll_at(t) for t in range(4)]
    result = evaluate_ppl(model, ByteTokenizer(), list(range(10)), context_len=4)
    assert result.stride == 4 and result.num_windows == 3 and result.num_tokens == 9
    assert result.mean_nll == pytest.approx((2 * sum(f) + f[3]) / 9)


def test_text_shorter_than_a_window_is_one_window():
    model = NextTokenByWindowPosition(vocab=50)
    result = evaluate_ppl(model, ByteTokenizer(), [0, 1, 2], context_len=8)
    assert result.num_windows == 1 and result.num_tokens == 2
    assert result.position_loss == pytest.approx([model.nll_at(0), model.nll_at(1)])


@pytest.mark.parametrize("context_len", [1, 2, 3, 5, 8])
def test_every_token_is_scored_once_with_the_most_context(context_len):
    for num_tokens in range(2, 40):
        for stride in range(1, context_len + 1):
            windows = _windows(num_tokens, context_len, stride)
            scored = []
            for start, length, first in windows:
                assert length == min(context_len, num_tokens - 1)
                assert 0 <= start and start + length + 1 <= num_tokens  # inputs and targets inside the text
                targets = range(start + 1 + first, start + length + 1)
                # Target j is predicted from tokens start .. j-1: all of them from the text's start, or at least
                # context_len - stride + 1 once the first window is done.
                assert all(j - start >= min(j, context_len - stride + 1) for j in targets)
                scored += targets
            assert scored == list(range(1, num_tokens)), (num_tokens, context_len, stride)


def test_bytes_of_token_input_skip_eos_and_decode_whole_characters():
    tok = ByteTokenizer()
    # "✓" is 3 bytes = 3 tokens: decoded one by one they would be 3 replacement characters of 3 bytes each.
    tokens = [tok.eos_id, *tok.encode("ab"), tok.eos_id, *tok.encode("ü✓"), tok.eos_id]
    result = evaluate_ppl(ConstantLogits(torch.zeros(257)), tok, tokens, context_len=4)
    assert result.num_tokens == 9  # all but the first; the EOS tokens are predicted and scored too
    assert result.num_bytes == 2 + 5
    assert result.bits_per_byte == pytest.approx(9 * math.log(257) / (7 * math.log(2)))
    given = evaluate_ppl(ConstantLogits(torch.zeros(257)), tok, tokens, context_len=4, num_bytes=16)
    assert given.num_bytes == 16 and given.bits_per_byte == pytest.approx(result.bits_per_byte * 7 / 16)


def _tiny_lm() -> MirasLM:
    torch.manual_seed(0)
    config = ModelConfig(
        preset="moneta", vocab_size=257, hidden_size=16, num_hidden_layers=1, num_heads=2, chunk_size=8, gate_rank=4
    )
    return MirasLM(config)


def test_real_model_is_deterministic_and_independent_of_batch_size():
    model = _tiny_lm().train()  # evaluation switches to eval mode and back
    text = "The Congress shall assemble at least once in every year. " * 3
    first = evaluate_ppl(model, ByteTokenizer(), text, context_len=32, stride=16, batch_size=4)
    again = evaluate_ppl(model, ByteTokenizer(), text, context_len=32, stride=16, batch_size=4)
    one_by_one = evaluate_ppl(model, ByteTokenizer(), text, context_len=32, stride=16, batch_size=1)
    assert model.training
    assert first == again
    assert one_by_one.mean_nll == pytest.approx(first.mean_nll, rel=1e-5)
    assert math.log(257) - 1 < first.mean_nll < math.log(257) + 1  # an untrained model is near uniform
    disjoint = evaluate_ppl(model, ByteTokenizer(), text, context_len=32, batch_size=4)
    assert disjoint.num_tokens == first.num_tokens and disjoint.num_windows < first.num_windows


def test_to_dict_is_json():
    result = evaluate_ppl(ConstantLogits(torch.zeros(257)), ByteTokenizer(), "abc", context_len=2)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["perplexity"] == pytest.approx(257) and data["num_tokens"] == 3
    assert PPLResult(**data) == result


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(context_len=0), "context_len must be >= 1"),
        (dict(context_len=4, stride=0), r"stride must be in \[1, context_len=4\], got 0"),
        (dict(context_len=4, stride=5), r"stride must be in \[1, context_len=4\], got 5"),
        (dict(context_len=4, batch_size=0), "batch_size must be >= 1"),
        (dict(context_len=4, text_or_tokens=""), "need at least 2 tokens"),
        (dict(context_len=4, text_or_tokens=[[1, 2], [3, 4]]), "1-D"),
        (dict(context_len=4, text_or_tokens=[256, 256]), "0 bytes"),
    ],
)
def test_bad_input(kwargs, message):
    kwargs = {"text_or_tokens": "some text", **kwargs}
    with pytest.raises(ValueError, match=message):
        evaluate_ppl(ConstantLogits(torch.zeros(257)), ByteTokenizer(), **kwargs)
