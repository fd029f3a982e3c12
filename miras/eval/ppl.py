"""Perplexity and bits-per-byte of a language model on a text, with sliding windows.

    evaluate_ppl(model, tokenizer, text_or_tokens, context_len, stride=None, batch_size=8, device=None,
                 num_bytes=None) -> PPLResult

PPLResult has `.perplexity`, `.bits_per_byte`, `.mean_nll`, `.num_tokens`, `.num_bytes`, `.token_accuracy`,
`.position_loss` and `.to_dict()` (JSON-safe).

Windows (Hugging Face's "perplexity of fixed-length models" guide, made exact): the sequence x_0 .. x_{N-1} is read
in windows of `context_len` input tokens that start every `stride` tokens; a window predicts the token after each of
its inputs, and only the predictions not made by an earlier window are scored, so every token x_1 .. x_{N-1} is
scored exactly once, by the window that gives it the most context. stride=None (= context_len) gives disjoint
windows, where the token at window position p is predicted from p + 1 tokens; with stride S < context_len every
token after the first window sees at least context_len - S + 1 tokens. The last window is moved back to end at the
last token (rather than being cut short), so every window has the same length and the tail gets full context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from miras.checks import check_int
from miras.data.shards import window_tokens
from miras.data.synthetic import IGNORE_INDEX
from miras.data.tokenizer import Tokenizer
from miras.metrics import NLLAccumulator


@dataclass(frozen=True)
class PPLResult:
    """perplexity = exp(mean_nll); bits_per_byte = total NLL / (num_bytes * ln 2); mean_nll in nats per token.

    num_tokens: tokens scored (every token but the first); num_bytes: UTF-8 bytes of the text they encode.
    token_accuracy: fraction of scored tokens that were the model's top-1 prediction.
    position_loss: mean NLL at each window position (index p: predicted from p + 1 tokens of the window). With
        stride S < context_len, positions below context_len - S are scored by the first window only.
    """

    perplexity: float
    bits_per_byte: float
    mean_nll: float
    num_tokens: int
    num_bytes: int
    token_accuracy: float
    context_len: int
    stride: int
    num_windows: int
    position_loss: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_ppl(
    model: nn.Module,
    tokenizer: Tokenizer,
    text_or_tokens: str | Sequence[int] | np.ndarray | torch.Tensor,
    context_len: int,
    stride: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    num_bytes: int | None = None,
) -> PPLResult:
    """Perplexity, bits per byte and per-position loss of `model` on a text (see the module docstring for windows).

    text_or_tokens: a str is encoded after an EOS token (the document separator the model was trained with), so
        every token of the text is scored and num_bytes is the text's UTF-8 size. Token ids (list, 1-D array or
        tensor) are used as given: the first token is context only, and tokens[1:] are scored.
    num_bytes: UTF-8 size of the text behind tokens[1:]; by default it is measured by decoding them (EOS tokens count
        zero bytes, as they stand for no text). Ignored for str input.
    model: called as model(input_ids [B, T]) -> output with .logits [B, T, vocab] (MirasLM); evaluated in eval mode
        without gradients, and left in the mode it was in.
    device: where the windows go; default the model's device.
    """
    check_int("context_len", context_len)
    stride = context_len if stride is None else stride
    if not 1 <= stride <= context_len:
        raise ValueError(f"stride must be in [1, context_len={context_len}], got {stride}")
    check_int("batch_size", batch_size)
    if isinstance(text_or_tokens, str):
        tokens = np.asarray([tokenizer.eos_id, *tokenizer.encode(text_or_tokens)], dtype=np.int64)
        num_bytes = len(text_or_tokens.encode("utf-8"))
    else:
        if isinstance(text_or_tokens, torch.Tensor):  # numpy cannot read a CUDA tensor
            text_or_tokens = text_or_tokens.cpu()
        tokens = np.asarray(text_or_tokens, dtype=np.int64)
        if tokens.ndim != 1:
            raise ValueError(f"token ids must be one sequence (1-D), got shape {tuple(tokens.shape)}")
        if num_bytes is None:
            num_bytes = _decoded_bytes(tokenizer, tokens[1:])
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {len(tokens)}")
    if num_bytes <= 0:
        raise ValueError("the scored tokens encode no text (0 bytes); bits per byte is undefined")

    windows = _windows(len(tokens), context_len, stride)
    if device is None:
        device = next(model.parameters()).device
    acc = NLLAccumulator()
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for lo in range(0, len(windows), batch_size):
                chunk = windows[lo : lo + batch_size]  # all windows have one length
                inputs, labels = window_tokens(tokens, np.array([s for s, _, _ in chunk]), chunk[0][1])
                for row, (_, _, first_scored) in enumerate(chunk):
                    labels[row, :first_scored] = IGNORE_INDEX  # predictions an earlier window already made
                acc.update(model(inputs.to(device)).logits, labels.to(device))
    finally:
        model.train(was_training)
    if acc.num_tokens != len(tokens) - 1:  # the window arithmetic above must score every token exactly once
        raise AssertionError(f"scored {acc.num_tokens} tokens, expected {len(tokens) - 1}")
    acc.num_bytes = num_bytes
    return PPLResult(
        perplexity=acc.perplexity,
        bits_per_byte=acc.bits_per_byte,
        mean_nll=acc.mean_nll,
        num_tokens=acc.num_tokens,
        num_bytes=num_bytes,
        token_accuracy=acc.accuracy,
        context_len=context_len,
        stride=stride,
        num_windows=len(windows),
        position_loss=acc.position_loss().tolist(),
    )


def _windows(num_tokens: int, context_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, first scored position) of each window over `num_tokens` tokens.

    A window of length w at start s reads tokens[s : s + w] and predicts tokens[s + 1 : s + w + 1]; the predictions
    of targets up to `scored_end` (exclusive) were made by earlier windows, so scoring starts after them.
    """
    num_targets = num_tokens - 1
    length = min(context_len, num_targets)  # a text shorter than one window is one shorter window
    windows, scored_end, start = [], 1, 0  # targets are token indices 1 .. num_tokens - 1
    while scored_end < num_tokens:
        start = min(start, num_targets - length)  # the last window ends at the last token instead of running short
        windows.append((start, length, scored_end - (start + 1)))
        scored_end = start + length + 1
        start += stride
    return windows


def _decoded_bytes(tokenizer: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 size of the text that `ids` encode, EOS tokens excluded.

    Text between EOS tokens is decoded as a whole: byte-level BPE tokens need not end on character boundaries, so
    decoding token by token would count half characters as U+FFFD.
    """
    cuts = np.flatnonzero(ids == tokenizer.eos_id)
    runs = np.split(ids, cuts)
    total = 0
    for i, run in enumerate(runs):
        run = run[1:] if i > 0 else run  # every run after the first starts with the EOS it was cut at
        if len(run):
            total += len(tokenizer.decode(run.tolist()).encode("utf-8"))
    return total
