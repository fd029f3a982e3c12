"""The trainer's evaluation: mean next-token loss on windows spread evenly over a validation set, and the unigram
baseline it is reported next to. Full evaluations (perplexity at any context, bits per byte) are miras.eval.ppl's."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from miras.data import window_tokens
from miras.metrics import NLLAccumulator
from miras.train.distributed import Distributed


def eval_windows(num_tokens: int, seq_len: int, max_tokens: int) -> np.ndarray:
    """Starts of non-overlapping (seq_len + 1)-token windows, spread evenly over the whole set (every era of a
    chronological corpus, not only its beginning). max_tokens -1: every window."""
    slots = (num_tokens - 1) // seq_len
    if slots < 1:
        raise ValueError(f"a validation set of {num_tokens} tokens is shorter than one window of seq_len + 1")
    count = slots if max_tokens == -1 else min(slots, max(1, max_tokens // seq_len))
    return (np.arange(count) * slots // count) * seq_len


@torch.no_grad()
def evaluate(
    model: nn.Module,
    tokens: np.ndarray,
    starts: np.ndarray,
    seq_len: int,
    batch_size: int,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    distributed: Distributed | None = None,
) -> NLLAccumulator:
    """Mean next-token NLL over the windows at `starts` (each window scored from its own start, no carried state).

    With a multi-process `distributed`, every rank must call this: each scores its contiguous share of the windows
    (batch_size per forward) and every rank gets the all-reduced totals. A rank short of windows runs padding windows
    it does not count, since FSDP needs every rank in every forward."""
    distributed = distributed or Distributed()
    share = -(-len(starts) // distributed.world_size)
    mine = starts[distributed.rank * share : (distributed.rank + 1) * share]
    counted = len(mine)
    mine = np.concatenate([mine, np.full(share - counted, starts[0], dtype=starts.dtype)])
    was_training = model.training
    model.eval()
    nll_sum, num_tokens = 0.0, 0
    for lo in range(0, share, batch_size):
        input_ids, labels = window_tokens(tokens, mine[lo : lo + batch_size], seq_len)
        with autocast or contextlib.nullcontext():
            logits = model(input_ids.to(device)).logits
        keep = min(len(labels), counted - lo)
        if keep > 0:
            nll = F.cross_entropy(
                logits[:keep].flatten(0, 1).float(), labels[:keep].to(device).flatten(), reduction="sum"
            )
            nll_sum, num_tokens = nll_sum + nll.item(), num_tokens + labels[:keep].numel()
    model.train(was_training)
    acc = NLLAccumulator()
    acc.add(*distributed.sum([nll_sum, num_tokens]))
    return acc


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """log p(token) of the add-one-smoothed unigram model of the training tokens, [vocab_size] float64."""
    counts = np.bincount(np.asarray(train_tokens), minlength=vocab_size).astype(np.float64) + 1.0
    return np.log(counts / counts.sum())
