"""Language-modelling and recall metrics: pure functions plus one streaming accumulator.

Conventions: NLL is in nats; `labels[:, t]` is the target for `logits[:, t]` (already shifted, as produced by
`miras.data.synthetic.mqar` and by slicing `tokens[:, 1:]`), and IGNORE_INDEX marks positions that are not scored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from miras.data.synthetic import IGNORE_INDEX


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """exp(nll_sum / num_tokens): e.g. a uniform prediction over V tokens has perplexity V."""
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    return math.exp(nll_sum / num_tokens)


def bits_per_byte(nll_sum: float, num_bytes: int) -> float:
    """nll_sum (nats over all scored tokens) / (num_bytes * ln 2), with num_bytes the UTF-8 size of the text those
    tokens encode. Unlike perplexity it does not depend on the tokenizer."""
    if num_bytes <= 0:
        raise ValueError(f"num_bytes must be > 0, got {num_bytes}")
    return nll_sum / (num_bytes * math.log(2))


def token_nll(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Per-token NLL in float32. logits [N, T, V], labels [N, T] -> [N, T], 0 where labels == ignore_index."""
    n, t, v = logits.shape
    nll = F.cross_entropy(
        logits.reshape(n * t, v).float(), labels.reshape(n * t), ignore_index=ignore_index, reduction="none"
    )
    return nll.view(n, t)


def per_position_loss(nll: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over examples of the loss at each position. nll [N, T], mask [N, T] bool -> [T] float64, NaN at positions
    where no example is scored."""
    # masked_fill rather than a product, so a NaN/inf at an unscored position cannot leak into the mean.
    return _mean_or_nan(nll.double().masked_fill(~mask, 0).sum(0), mask.sum(0))


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of scored positions (labels != ignore_index) where argmax(logits) == label. logits [N, T, V], labels
    [N, T]. This is zoology's MQAR accuracy."""
    mask = labels != ignore_index
    num_scored = int(mask.sum())
    if num_scored == 0:
        raise ValueError("no scored positions: every label equals ignore_index")
    return _num_correct(logits, labels, mask) / num_scored


class NLLAccumulator:
    """Running sums over an evaluation: NLL (nats), scored tokens, text bytes, argmax hits and per-position loss.

    Feed it either full outputs with `update(logits, labels)` or precomputed sums with `add(nll_sum, num_tokens)`
    (e.g. from a fused loss that never materialises logits). `accuracy` and `position_loss` only count `update` calls.
    """

    def __init__(self) -> None:
        self.nll_sum = 0.0
        self.num_tokens = 0
        self.num_bytes = 0
        self.num_correct = 0
        self.num_judged = 0  # tokens seen through update(), the denominator of accuracy
        self.position_nll_sum = torch.zeros(0, dtype=torch.float64)  # [T_max]
        self.position_count = torch.zeros(0, dtype=torch.int64)  # [T_max]

    def add(self, nll_sum: float, num_tokens: int, num_bytes: int = 0) -> None:
        """Adds precomputed sums; num_bytes is the UTF-8 size of the text behind the tokens (0 if unknown)."""
        self.nll_sum += float(nll_sum)
        self.num_tokens += int(num_tokens)
        self.num_bytes += int(num_bytes)

    def update(
        self, logits: torch.Tensor, labels: torch.Tensor, num_bytes: int = 0, ignore_index: int = IGNORE_INDEX
    ) -> None:
        """Adds one batch: logits [N, T, V], labels [N, T]. Batches may differ in T."""
        mask = labels != ignore_index
        nll = token_nll(logits, labels, ignore_index)
        self.add(nll.double().sum().item(), int(mask.sum()), num_bytes)
        self.num_correct += _num_correct(logits, labels, mask)
        self.num_judged += int(mask.sum())
        t = labels.shape[1]
        if t > self.position_count.numel():  # grow the per-position buffers to the longest batch so far
            pad = t - self.position_count.numel()
            self.position_nll_sum = F.pad(self.position_nll_sum, (0, pad))
            self.position_count = F.pad(self.position_count, (0, pad))
        # the running sums live on the CPU whatever the model's device: a CPU buffer += a CUDA tensor is an error
        self.position_nll_sum[:t] += nll.double().masked_fill(~mask, 0).sum(0).cpu()
        self.position_count[:t] += mask.sum(0).cpu()

    @property
    def mean_nll(self) -> float:
        if self.num_tokens == 0:
            raise ValueError("no tokens accumulated")
        return self.nll_sum / self.num_tokens

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll_sum, self.num_tokens)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.nll_sum, self.num_bytes)

    @property
    def accuracy(self) -> float:
        if self.num_judged == 0:
            raise ValueError("accuracy needs update(logits, labels) calls")
        return self.num_correct / self.num_judged

    def position_loss(self) -> torch.Tensor:
        """[T_max] float64 mean NLL per position over all update() batches; NaN where nothing was scored."""
        return _mean_or_nan(self.position_nll_sum, self.position_count)


def _num_correct(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> int:
    return int(((logits.argmax(-1) == labels) & mask).sum())


def _mean_or_nan(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))
