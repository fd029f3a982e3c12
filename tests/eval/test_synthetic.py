import re
import uuid

import numpy as np
import pytest
import torch

from miras.data.synthetic import (
    IGNORE_INDEX,
    NIAH_VARIANTS,
    mqar,
    mqar_splits,
    niah_accuracy,
    niah_grid,
    niah_match,
    niah_sample,
)

# ------------------------------------------------------------------------------------------------------------------
# MQAR


@pytest.mark.parametrize(
    "seq_len,num_kv_pairs,vocab_size,random_non_queries",
    [(64, 4, 8192, True), (65, 8, 100, True), (32, 8, 18, False), (256, 16, 512, True)],
    ids=lambda v: str(v),
)
def test_mqar_labels(seq_len, num_kv_pairs, vocab_size, random_non_queries):
    inputs, labels = mqar(200, seq_len, num_kv_pairs, vocab_size, seed=3, random_non_queries=random_non_queries)
    assert inputs.shape == labels.shape == (200, seq_len)
    assert inputs.dtype == labels.dtype == torch.int64
    assert int(inputs.min()) >= 0 and int(inputs.max()) < vocab_size
    k, half, prefix = num_kv_pairs, vocab_size // 2, 2 * num_kv_pairs
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist()):
        keys, values = row_inputs[0:prefix:2], row_inputs[1:prefix:2]
        assert len(set(keys)) == k and len(set(values)) == k
        assert all(1 <= key < half for key in keys)
        assert all(half <= value < vocab_size for value in values)
        kv = dict(zip(keys, values))
        scored = [t for t, label in enumerate(row_labels) if label != IGNORE_INDEX]
        assert len(scored) == k
        # Each key is queried once, after the prefix at an even offset, and its label is the value it was paired with.
        assert sorted(row_inputs[t] for t in scored) == sorted(keys)
        for t in scored:
            assert t >= prefix and (t - prefix) % 2 == 0
            assert row_labels[t] == kv[row_inputs[t]]
        if not random_non_queries:
            assert all(row_inputs[t] == 0 for t in range(prefix, seq_len) if t not in scored)


def test_mqar_deterministic():
    a = mqar(50, 64, 4, 256, seed=7)
    np.random.seed(123)  # global RNG state must not matter
    torch.manual_seed(123)
    b = mqar(50, 64, 4, 256, seed=7)
    c = mqar(50, 64, 4, 256, seed=8)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_mqar_query_order_is_shuffled():
    # Queries must not always come in prefix order, or position alone would give the answer away.
    inputs, labels = mqar(100, 64, 4, 256, seed=0)
    in_prefix_order = 0
    for row_inputs, row_labels in zip(inputs.tolist(), labels.tolist()):
        queried = [row_inputs[t] for t, label in enumerate(row_labels) if label != IGNORE_INDEX]
        in_prefix_order += queried == row_inputs[0:8:2]
    assert in_prefix_order < 20  # 1/4! of 100 rows in expectation


def test_mqar_power_law_gaps():
    # power_a -> 0 puts queries close to the prefix; power_a = 1 spreads them uniformly.
    def mean_query_pos(power_a):
        _, labels = mqar(500, 256, 4, 1024, seed=0, power_a=power_a)
        return (labels != IGNORE_INDEX).nonzero()[:, 1].double().mean().item()

    assert mean_query_pos(0.01) < 0.7 * mean_query_pos(1.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(seq_len=15, num_kv_pairs=4, vocab_size=64), "seq_len=15 is too short"),
        (dict(seq_len=64, num_kv_pairs=4, vocab_size=9), "vocab_size=9 is too small"),
        (dict(seq_len=64, num_kv_pairs=0, vocab_size=64), "num_kv_pairs"),
        (dict(seq_len=64, num_kv_pairs=4, vocab_size=64, num_examples=0), "num_examples"),
        (dict(seq_len=64, num_kv_pairs=4, vocab_size=64, power_a=0.0), "power_a"),
    ],
)
def test_mqar_invalid_args(kwargs, match):
    kwargs = {"num_examples": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        mqar(seed=0, **kwargs)


def _rows(x):
    return {tuple(row) for row in x.tolist()}


def test_mqar_splits_disjoint():
    splits = mqar_splits(64, 4, 256, train_examples=300, test_examples=100, seed=0)
    assert splits.train.inputs.shape == (300, 64) and splits.test.inputs.shape == (100, 64)
    assert not _rows(splits.train.inputs) & _rows(splits.test.inputs)
    again = mqar_splits(64, 4, 256, train_examples=300, test_examples=100, seed=0)
    assert torch.equal(splits.test.inputs, again.test.inputs) and torch.equal(splits.test.labels, again.test.labels)


def test_mqar_splits_tiny_space():
    # vocab 8, one pair, one slot, zero filler: only 3 keys x 4 values = 12 distinct rows, so redraws are needed.
    args = dict(seq_len=4, num_kv_pairs=1, vocab_size=8, random_non_queries=False)
    splits = mqar_splits(**args, train_examples=6, test_examples=5, seed=1)
    assert len(splits.test.inputs) == 5
    assert not _rows(splits.train.inputs) & _rows(splits.test.inputs)
    with pytest.raises(ValueError, match="distinct from the 200 train examples"):
        mqar_splits(**args, train_examples=200, test_examples=1, seed=1, max_rounds=5)


# ------------------------------------------------------------------------------------------------------------------
# Needle in a haystack


class ByteTokenizer:
    def encode(self, text):
        return list(text.encode("utf-8"))

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


class WordTokenizer:
    """BPE-like: words carry their leading space, so tokens span several characters."""

    def __init__(self):
        self.ids, self.pieces = {}, []

    def encode(self, text):
        out = []
        for piece in re.findall(r" ?\w+| ?[^\w\s]|\s", text):
            if piece not in self.ids:
                self.ids[piece] = len(self.pieces)
                self.pieces.append(piece)
            out.append(self.ids[piece])
        return out

    def decode(self, ids):
        return "".join(self.pieces[i] for i in ids)


DOCUMENTS = [
    "The river runs past the mill. Farmers bring grain in autumn! Who owns the mill now? Nobody knows.",
    "Congress met in the winter. The members argued about taxes and roads. A bill passed late at night.",
    "Glaciers move slowly. They carve valleys over thousands of years.",
]


@pytest.mark.parametrize("tokenizer_cls", [ByteTokenizer, WordTokenizer])
@pytest.mark.parametrize("variant", NIAH_VARIANTS)
@pytest.mark.parametrize("context_len,depth", [(700, 0.0), (900, 0.37), (1500, 1.0), (600, 0.5)])
def test_niah_sample(tokenizer_cls, variant, context_len, depth):
    tok = tokenizer_cls()
    sample = niah_sample(tok, variant, context_len, depth, seed=11, documents=DOCUMENTS)
    prompt = sample.prompt_ids
    # The haystack fills the budget exactly.
    assert len(prompt) == context_len

    text = tok.decode(prompt)
    noun = "uuid" if variant in ("uuid", "word") else "number"
    needle = f"One of the special magic {noun}s for {sample.key} is"
    assert text.count(sample.answer) == 1 and text.count(needle) == 1
    assert text.endswith(f"The special magic {noun} for {sample.key} mentioned in the provided text is")
    assert tok.decode(prompt[sample.needle_pos :]).startswith(" " + needle)
    assert tok.decode(sample.answer_ids) == " " + sample.answer
    if noun == "uuid":
        assert uuid.UUID(sample.answer).version == 4
    else:
        assert re.fullmatch(r"\d{7}", sample.answer)

    # Depth: the needle sits at the sentence boundary nearest the requested fraction of the haystack.
    header_len = len(tok.encode(text[: text.index("\n") + 1]))
    haystack_len = (
        context_len
        - header_len
        - len(tok.encode(f" {needle}: {sample.answer}."))
        - len(tok.encode(text[text.rindex("\n") :]))
    )
    assert sample.needle_pos - header_len == round(sample.needle_depth * haystack_len)
    longest_sentence = max(len(tok.encode(" " + s)) for s in re.split(r"(?<=[.!?])\s+", " ".join(DOCUMENTS)))
    assert abs(sample.needle_depth - depth) <= longest_sentence / haystack_len
    if variant == "passkey":
        haystack = text[text.index("\n") + 1 : text.rindex("\n")]
        assert "The grass is green." in haystack and not any(doc[:20] in haystack for doc in DOCUMENTS)


def test_niah_deterministic():
    tok = ByteTokenizer()
    a = niah_sample(tok, "number", 800, 0.5, seed=5, documents=DOCUMENTS)
    assert a == niah_sample(tok, "number", 800, 0.5, seed=5, documents=DOCUMENTS)
    b = niah_sample(tok, "number", 800, 0.5, seed=6, documents=DOCUMENTS)
    assert (a.answer, a.key) != (b.answer, b.key)


@pytest.mark.parametrize(
    "variant,context_len,depth,documents,match",
    [
        ("needle", 800, 0.5, DOCUMENTS, "unknown NIAH variant"),
        ("number", 800, 1.5, DOCUMENTS, "depth"),
        ("number", 800, 0.5, None, "needs a non-empty list of documents"),
        ("uuid", 800, 0.5, ["  "], "needs a non-empty list of documents"),
        ("passkey", 200, 0.5, None, "leaves no room for a haystack"),
    ],
)
def test_niah_invalid_args(variant, context_len, depth, documents, match):
    with pytest.raises(ValueError, match=match):
        niah_sample(ByteTokenizer(), variant, context_len, depth, seed=0, documents=documents)


def test_niah_grid():
    tok = ByteTokenizer()
    grid = niah_grid(tok, "uuid", [600, 900], [0.0, 0.5, 1.0], 2, seed=3, documents=DOCUMENTS)
    assert len(grid) == 12
    assert [(s.context_len, s.depth) for s in grid[:2]] == [(600, 0.0)] * 2
    assert grid[0].answer != grid[1].answer
    # A cell's samples do not depend on the rest of the grid.
    assert niah_grid(tok, "uuid", [900], [0.5], 2, seed=3, documents=DOCUMENTS) == grid[8:10]

    perfect = [f" {s.answer.upper()}." for s in grid]
    assert niah_accuracy(grid, perfect) == {(n, d): 1.0 for n in (600, 900) for d in (0.0, 0.5, 1.0)}
    half_right = [s.answer if i % 2 else "no idea" for i, s in enumerate(grid)]
    assert set(niah_accuracy(grid, half_right).values()) == {0.5}


def test_niah_match():
    assert niah_match(" 1234567.", "1234567")
    assert niah_match("ABCD-ef", "abcd-EF")
    assert not niah_match(" 123456", "1234567")
    assert not niah_match(" 12345678", "1234567") and not niah_match("9912345670", "1234567")  # a longer number
    assert niah_match("is 1234567, and", "1234567") and niah_match("1234567", "1234567")
