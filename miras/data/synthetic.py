"""Seeded synthetic recall tasks.

- MQAR, multi-query associative recall (zoology semantics): `mqar`, `mqar_splits`.
- Single-needle needle-in-a-haystack (RULER S-NIAH): `niah_sample`, `niah_grid`, scored with `niah_match` and
  `niah_accuracy`.

Every generator draws from its own numpy Generator built from `seed`, so the output depends only on the arguments,
never on the global numpy/torch RNG state.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import torch

from miras.checks import check_int

IGNORE_INDEX = -100  # label of unscored positions; torch.nn.functional.cross_entropy ignores it by default

# ------------------------------------------------------------------------------------------------------------------
# MQAR


class MQARBatch(NamedTuple):
    """inputs: [N, T] int64 token ids; labels: [N, T] int64, IGNORE_INDEX where not scored.

    Labels are already aligned with the outputs: score `logits[:, t]` (computed from `inputs[:, :t+1]`) against
    `labels[:, t]`, without the usual one-step shift.
    """

    inputs: torch.Tensor
    labels: torch.Tensor


class MQARSplits(NamedTuple):
    train: MQARBatch
    test: MQARBatch


def mqar(
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    *,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> MQARBatch:
    """Multi-query associative recall examples, as in zoology's `multiquery_ar`.

    With K = num_kv_pairs, T = seq_len, V = vocab_size and S = (T - 2K) // 2 query slots, each row is

        positions 0 .. 2K-1:  k_1 v_1 k_2 v_2 ... k_K v_K     keys distinct, in [1, V//2); values distinct, in [V//2, V)
        position 2K + 2*g_i:  k_i                             every key is queried exactly once, g_i in [0, S) distinct
        all other positions:  filler                          uniform in [0, V) if random_non_queries, else 0

    labels[n, 2K + 2*g_i] = v_i and every other label is IGNORE_INDEX. So the output at the query position (which
    has seen the query key) must predict its value; the value never appears after the query in `inputs` (the next
    input is filler), so it can only be recalled from the prefix. The gaps g are drawn without replacement with
    P(g) proportional to power_a * (g + 1) ** (power_a - 1): power_a -> 0 favours queries close to the prefix,
    power_a = 1 is uniform. Token 0 is never a key or a query, but random filler may repeat any token (zoology
    does the same); filler positions are never scored.

    Returns MQARBatch(inputs [N, T], labels [N, T]).
    """
    _check_mqar_args(num_examples, seq_len, num_kv_pairs, vocab_size, power_a)
    inputs, labels = _mqar_arrays(
        np.random.default_rng(seed), num_examples, seq_len, num_kv_pairs, vocab_size, power_a, random_non_queries
    )
    return MQARBatch(torch.from_numpy(inputs), torch.from_numpy(labels))


def mqar_splits(
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    *,
    train_examples: int,
    test_examples: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
    max_rounds: int = 100,
) -> MQARSplits:
    """Train and test MQAR sets in which no test row's `inputs` equals any train row's `inputs`.

    The two sets come from independent streams spawned from `seed` (so `.train` differs from `mqar(..., seed=seed)`),
    with the same `mqar` layout and label alignment. Test rows that repeat a train row are dropped
    and redrawn (only likely with tiny vocabularies); a ValueError is raised if `max_rounds` redraws are not enough,
    i.e. when the task has too few distinct examples for the requested sizes.
    """
    _check_mqar_args(train_examples, seq_len, num_kv_pairs, vocab_size, power_a)
    _check_mqar_args(test_examples, seq_len, num_kv_pairs, vocab_size, power_a)
    train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
    args = (seq_len, num_kv_pairs, vocab_size, power_a, random_non_queries)
    train_inputs, train_labels = _mqar_arrays(np.random.default_rng(train_ss), train_examples, *args)
    seen = {_row_digest(row) for row in train_inputs}

    test_rng = np.random.default_rng(test_ss)
    kept_inputs, kept_labels, num_kept = [], [], 0
    for _ in range(max_rounds):
        inputs, labels = _mqar_arrays(test_rng, test_examples - num_kept, *args)
        # A digest collision could only drop a test row that is actually new: the disjointness guarantee holds.
        fresh = np.array([_row_digest(row) not in seen for row in inputs], dtype=bool)
        kept_inputs.append(inputs[fresh])
        kept_labels.append(labels[fresh])
        num_kept += int(fresh.sum())
        if num_kept == test_examples:
            break
    else:
        raise ValueError(
            f"found only {num_kept} of {test_examples} test examples distinct from the {train_examples} train examples "
            f"after {max_rounds} rounds; increase vocab_size or seq_len, or ask for fewer examples"
        )
    train = MQARBatch(torch.from_numpy(train_inputs), torch.from_numpy(train_labels))
    test = MQARBatch(torch.from_numpy(np.concatenate(kept_inputs)), torch.from_numpy(np.concatenate(kept_labels)))
    return MQARSplits(train, test)


def _check_mqar_args(num_examples: int, seq_len: int, num_kv_pairs: int, vocab_size: int, power_a: float) -> None:
    check_int("num_examples", num_examples)
    check_int("num_kv_pairs", num_kv_pairs)
    if seq_len < 4 * num_kv_pairs:
        raise ValueError(
            f"seq_len={seq_len} is too short for {num_kv_pairs} kv pairs: the prefix takes 2*num_kv_pairs tokens and "
            f"each query needs its own 2-token slot after it, so seq_len must be >= 4*num_kv_pairs = {4 * num_kv_pairs}"
        )
    num_keys, num_values = vocab_size // 2 - 1, vocab_size - vocab_size // 2  # keys skip token 0
    if min(num_keys, num_values) < num_kv_pairs:
        raise ValueError(
            f"vocab_size={vocab_size} is too small for {num_kv_pairs} distinct keys in [1, vocab_size//2) and distinct "
            f"values in [vocab_size//2, vocab_size); need vocab_size >= {2 * num_kv_pairs + 2}"
        )
    if not power_a > 0:
        raise ValueError(f"power_a must be > 0, got {power_a}")


def _mqar_arrays(
    rng: np.random.Generator,
    num_examples: int,
    seq_len: int,
    num_kv_pairs: int,
    vocab_size: int,
    power_a: float,
    random_non_queries: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The arrays behind `mqar`: (inputs [N, T], labels [N, T]), both int64."""
    n, k, half = num_examples, num_kv_pairs, vocab_size // 2
    prefix = 2 * k
    # A per-row choice without replacement is cheap (~10 us) and exact; a vectorised draw over the whole half vocab
    # would cost O(N * V) time and memory.
    keys = 1 + np.stack([rng.choice(half - 1, size=k, replace=False) for _ in range(n)])  # [N, K]
    values = half + np.stack([rng.choice(vocab_size - half, size=k, replace=False) for _ in range(n)])  # [N, K]

    # Gumbel top-k: the k largest of log p + Gumbel noise, in decreasing order, have the law of k sequential
    # weighted draws without replacement (zoology's np.random.choice(..., replace=False, p=p)), vectorised over rows.
    # Key i gets the i-th draw, so the query order is a random permutation of the prefix order, not a copy of it.
    num_slots = (seq_len - prefix) // 2
    log_p = (power_a - 1) * np.log(np.arange(1, num_slots + 1))  # log p up to a constant
    scores = log_p + rng.gumbel(size=(n, num_slots))  # [N, S]
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # [N, K], in no particular order
    gaps = np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)  # [N, K]
    query_pos = prefix + 2 * gaps  # [N, K]

    if random_non_queries:
        inputs = rng.integers(0, vocab_size, size=(n, seq_len), dtype=np.int64)
    else:
        inputs = np.zeros((n, seq_len), dtype=np.int64)
    inputs[:, 0:prefix:2] = keys
    inputs[:, 1:prefix:2] = values
    rows = np.arange(n)[:, None]
    inputs[rows, query_pos] = keys
    labels = np.full((n, seq_len), IGNORE_INDEX, dtype=np.int64)
    labels[rows, query_pos] = values
    return inputs, labels


def _row_digest(row: np.ndarray) -> bytes:
    # 16-byte digests instead of the raw rows keep the seen-set small for 100k-row training sets.
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()


# ------------------------------------------------------------------------------------------------------------------
# Needle in a haystack (RULER S-NIAH)


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class _Variant:
    noun: str  # what the needle's value is called in the template
    real_text: bool  # haystack from the caller's documents (True) or repeated filler sentences (False)


# The paper's S-NIAH columns: PK = "passkey" (RULER niah_single_1: filler haystack, 7-digit number),
# N = "number" (niah_single_2: essay haystack, 7-digit number), W = "word" (niah_single_3: essay haystack, a UUID
# keyed by a word), also reachable as "uuid".
_VARIANTS = {
    "passkey": _Variant("number", real_text=False),
    "number": _Variant("number", real_text=True),
    "uuid": _Variant("uuid", real_text=True),
    "word": _Variant("uuid", real_text=True),
}
NIAH_VARIANTS = tuple(_VARIANTS)

# RULER's "repeat" haystack.
_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
_HEADER = (
    "Some special magic {noun}s are hidden within the following text. "
    "Make sure to memorize it. I will quiz you about the {noun}s afterwards.\n"
)
_NEEDLE = " One of the special magic {noun}s for {key} is: {value}."
_QUESTION = (
    "\nWhat is the special magic {noun} for {key} mentioned in the provided text? "
    "The special magic {noun} for {key} mentioned in the provided text is"
)
# Needle keys are adjective-noun pairs, like RULER's word keys; 40 x 40 = 1600 keys.
_ADJECTIVES = (
    "amber brave calm dusty eager fancy gentle hollow icy jolly keen lively mellow noisy odd polite quiet rapid "
    "rusty shy silent sleepy smooth sour spicy steady sturdy tame tidy tiny vast velvet vivid wary witty woolly "
    "young zealous bitter crisp"
).split()
_NOUNS = (
    "anchor badger beacon canyon cedar comet falcon ferry garden glacier harbor heron island jacket kettle lantern "
    "meadow mirror nickel orchard otter parcel pepper quarry raven ribbon saddle spruce tavern thistle tunnel "
    "valley walrus willow window yacht zebra pebble marble candle"
).split()
# Whitespace after . ! or ?, except after common titles and initials ("Mr. Speaker", "U.S. Congress"), so that the
# needle does not split a name; RULER uses nltk's sentence tokenizer, which we do not depend on.
_SENTENCE_END = re.compile(r"(?<=[.!?])(?<!\bMr\.)(?<!\bMrs\.)(?<!\bMs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\b[A-Z]\.)\s+")


@dataclass(frozen=True)
class NIAHSample:
    """One S-NIAH prompt of exactly context_len tokens (the haystack fills whatever the template leaves).

    prompt_ids: header, haystack with the needle at a sentence boundary, then the question ending in "... is".
    answer / answer_ids: the needle's value, and the ids of " " + answer, i.e. what should follow the prompt.
    needle_pos: index in prompt_ids of the needle's first token.
    needle_depth: achieved depth, haystack tokens before the needle / haystack tokens (the requested `depth`,
        rounded to the nearest sentence boundary).
    """

    prompt_ids: list[int]
    answer: str
    answer_ids: list[int]
    key: str
    variant: str
    context_len: int
    depth: float
    needle_pos: int
    needle_depth: float


def niah_sample(
    tokenizer: Tokenizer,
    variant: str,
    context_len: int,
    depth: float,
    *,
    seed: int | Sequence[int],
    documents: Sequence[str] | None = None,
) -> NIAHSample:
    """One single-needle prompt of `context_len` tokens with the needle at `depth` of the haystack.

    variant: one of NIAH_VARIANTS. "passkey" hides a 7-digit number in repeated filler sentences; "number" hides a
    7-digit number and "uuid" (alias "word", the paper's S-NIAH-W) a UUID in real text taken from `documents`,
    starting at a random document and continuing through the following ones (wrapping around). `documents` is
    required by the real-text variants and unused by "passkey".
    context_len: prompt length in tokens. RULER budgets max_seq_length - tokens_to_generate for the prompt; pass
        that difference if the model's window must also hold the answer.
    depth: 0 puts the needle before the haystack, 1 after it.
    seed: anything np.random.default_rng accepts; it picks the key, the value and the first document.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"unknown NIAH variant {variant!r}; choose one of {NIAH_VARIANTS}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    spec = _VARIANTS[variant]
    if spec.real_text and (documents is None or not any(doc.strip() for doc in documents)):
        raise ValueError(f"NIAH variant {variant!r} needs a non-empty list of documents for its haystack")
    rng = np.random.default_rng(seed)
    key = f"{rng.choice(_ADJECTIVES)}-{rng.choice(_NOUNS)}"
    if spec.noun == "uuid":
        answer = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    else:
        answer = str(int(rng.integers(10**6, 10**7)))

    header = tokenizer.encode(_HEADER.format(noun=spec.noun))
    needle = tokenizer.encode(_NEEDLE.format(noun=spec.noun, key=key, value=answer))
    question = tokenizer.encode(_QUESTION.format(noun=spec.noun, key=key))
    budget = context_len - len(header) - len(needle) - len(question)
    if budget < 1:
        raise ValueError(
            f"context_len={context_len} leaves no room for a haystack: the template alone takes "
            f"{context_len - budget} tokens"
        )
    sentences = _document_sentences(documents, rng) if spec.real_text else itertools.cycle(_FILLER)
    haystack, bounds = _fill_haystack(tokenizer, sentences, budget)
    cut = min(bounds, key=lambda b: abs(b - depth * len(haystack)))
    return NIAHSample(
        prompt_ids=header + haystack[:cut] + needle + haystack[cut:] + question,
        answer=answer,
        answer_ids=tokenizer.encode(" " + answer),
        key=key,
        variant=variant,
        context_len=context_len,
        depth=depth,
        needle_pos=len(header) + cut,
        needle_depth=cut / len(haystack),
    )


def niah_grid(
    tokenizer: Tokenizer,
    variant: str,
    context_lens: Sequence[int],
    depths: Sequence[float],
    samples_per_cell: int,
    *,
    seed: int,
    documents: Sequence[str] | None = None,
) -> list[NIAHSample]:
    """niah_sample over context_lens x depths x range(samples_per_cell), in that nesting order.

    Each sample's seed is derived from (seed, context_len, depth, sample index), so a cell's prompts do not change
    when other lengths or depths are added to the grid.
    """
    check_int("samples_per_cell", samples_per_cell)
    return [
        niah_sample(
            tokenizer, variant, length, depth, seed=[seed, length, round(depth * 1_000_000), i], documents=documents
        )
        for length in context_lens
        for depth in depths
        for i in range(samples_per_cell)
    ]


def niah_match(generated: str, answer: str) -> bool:
    """RULER's string-match score, made whole-token: the generated text contains the needle's value
    (case-insensitive) with no letter or digit right before or after it, so "12345678" does not count as "1234567"
    (RULER's plain substring test would count it)."""
    pattern = rf"(?<![0-9a-z]){re.escape(answer.lower())}(?![0-9a-z])"
    return re.search(pattern, generated.lower()) is not None


def niah_accuracy(samples: Sequence[NIAHSample], generations: Sequence[str]) -> dict[tuple[int, float], float]:
    """Fraction of matches per (context_len, depth) cell; generations[i] is the model's continuation of samples[i]."""
    if len(samples) != len(generations):
        raise ValueError(f"{len(samples)} samples but {len(generations)} generations")
    hits: dict[tuple[int, float], list[bool]] = defaultdict(list)
    for sample, generated in zip(samples, generations):
        hits[(sample.context_len, sample.depth)].append(niah_match(generated, sample.answer))
    return {cell: sum(h) / len(h) for cell, h in hits.items()}


def _document_sentences(documents: Sequence[str], rng: np.random.Generator) -> Iterator[str]:
    """Sentences of documents[start], documents[start + 1], ... (cyclically) for a random start; never ends."""
    start = int(rng.integers(len(documents)))
    for i in itertools.count(start):  # wraps around the corpus as often as the haystack needs
        yield from (s for s in _SENTENCE_END.split(documents[i % len(documents)].strip()) if s)


def _fill_haystack(tokenizer: Tokenizer, sentences: Iterator[str], budget: int) -> tuple[list[int], list[int]]:
    """Exactly `budget` haystack ids (the last sentence may be cut) and the sentence-start offsets, incl. the end."""
    ids: list[int] = []
    bounds = [0]
    while len(ids) < budget:
        # Each sentence is encoded on its own with a leading space, so the needle can be spliced in between sentences
        # at the token level without re-tokenising the whole haystack.
        ids.extend(tokenizer.encode(" " + next(sentences))[: budget - len(ids)])
        bounds.append(len(ids))
    return ids, bounds
