"""Needle-in-a-haystack recall (RULER S-NIAH, the paper's Table 3) of a language model, by greedy decoding.

    evaluate_niah(model, tokenizer, *, lengths, depths, variants=("passkey", "number", "uuid"), samples_per_cell=10,
                  seed=0, haystack="sotu", max_new_tokens=None, batch_size=8, device=None) -> NIAHResult

NIAHResult has `.accuracy` (over every sample), `.by_variant`, `.cells`, `.samples`, `.grid(variant)` and
`.to_dict()` (JSON-safe).

Prompts come from `miras.data.synthetic.niah_grid`: exactly `length` tokens each, the needle at `depth` of the
haystack (rounded to a sentence boundary). The model reads the prompt in one chunk-parallel forward and then decodes
greedily one `step` at a time from its recurrent cache (MirasLM.generate with temperature 0). A sample is correct
when its decoded continuation, cut at the first EOS, contains the needle's value (RULER's `niah_match`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from miras.checks import check_int
from miras.data.corpus import CORPORA, load_corpus
from miras.data.shards import iter_documents
from miras.data.synthetic import NIAH_VARIANTS, NIAHSample, niah_grid, niah_match
from miras.data.tokenizer import Tokenizer

# The paper's three S-NIAH columns: PK (filler haystack), N (number in real text), W (UUID in real text).
DEFAULT_VARIANTS = ("passkey", "number", "uuid")
# Greedy tokens beyond the answer's own length: room for a little preamble (a space, "the number is") before it.
ANSWER_SLACK = 8


@dataclass(frozen=True)
class NIAHCell:
    variant: str
    length: int
    depth: float
    accuracy: float
    num_samples: int
    # Where the needles really sit: the requested depth rounded to a sentence start, which at short lengths (a few
    # hundred tokens, a few sentences) can be far from it.
    mean_needle_depth: float


@dataclass(frozen=True)
class NIAHRecord:
    """One prompt's outcome. needle_depth is the achieved depth (the requested one rounded to a sentence start)."""

    variant: str
    length: int
    depth: float
    needle_depth: float
    answer: str
    generated: str
    correct: bool


@dataclass(frozen=True)
class NIAHResult:
    """accuracy: fraction of all samples answered; by_variant: the same per variant; cells: one per (variant, length,
    depth) in grid order; samples: every prompt's outcome in the same order."""

    accuracy: float
    by_variant: dict[str, float]
    cells: list[NIAHCell]
    samples: list[NIAHRecord]
    lengths: list[int]
    depths: list[float]
    variants: list[str]
    samples_per_cell: int
    seed: int
    haystack: str

    def grid(self, variant: str) -> dict[tuple[int, float], float]:
        """(length, depth) -> accuracy of one variant, the input of `miras.plots.plot_niah_heatmap`."""
        if variant not in self.variants:
            raise ValueError(f"variant {variant!r} was not evaluated; evaluated: {self.variants}")
        return {(c.length, c.depth): c.accuracy for c in self.cells if c.variant == variant}

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_niah(
    model: nn.Module,
    tokenizer: Tokenizer,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    variants: Sequence[str] = DEFAULT_VARIANTS,
    samples_per_cell: int = 10,
    seed: int = 0,
    haystack: str | os.PathLike | Sequence[str] = "sotu",
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    device: str | torch.device | None = None,
) -> NIAHResult:
    """Greedy-decoding S-NIAH accuracy per (variant, length, depth) and overall.

    lengths: prompt lengths in tokens; depths: needle depths in [0, 1]; variants: names from
        `miras.data.synthetic.NIAH_VARIANTS` ("word" is the paper's name for "uuid").
    seed: every variant uses the same seed, so variants differ only in haystack and value type, and a cell's prompts
        do not change when lengths or depths are added.
    haystack: real text for "number" and "uuid": an embedded corpus name ("sotu", its held-out validation addresses;
        "wiki"), a data file/folder/glob, or a list of documents. "passkey" always uses RULER's filler sentences.
    max_new_tokens: greedy tokens per prompt; default the answer's token count + ANSWER_SLACK, per sample.
    model: a MirasLM (needs `generate`); evaluated in eval mode and left in the mode it was in.
    """
    lengths, depths, variants = list(lengths), [float(d) for d in depths], list(variants)
    if not lengths or not depths or not variants:
        raise ValueError("lengths, depths and variants must each name at least one value")
    for name, values in (("lengths", lengths), ("depths", depths), ("variants", variants)):
        if len(set(values)) != len(values):  # a repeated value would repeat the same prompts in one cell
            raise ValueError(f"{name} has duplicates: {values}")
    unknown = [v for v in variants if v not in NIAH_VARIANTS]
    if unknown:
        raise ValueError(f"unknown NIAH variant(s) {unknown}; choose from {NIAH_VARIANTS}")
    if any(length < 1 for length in lengths):
        raise ValueError(f"lengths must be positive, got {lengths}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise ValueError(f"depths must be in [0, 1], got {depths}")
    if max_new_tokens is not None:
        check_int("max_new_tokens", max_new_tokens)
    check_int("batch_size", batch_size)
    documents, haystack_name = _haystack_documents(haystack)
    if device is None:
        device = next(model.parameters()).device

    records: list[NIAHRecord] = []
    was_training = model.training
    model.eval()
    try:
        for variant in variants:
            samples = niah_grid(tokenizer, variant, lengths, depths, samples_per_cell, seed=seed, documents=documents)
            generations = _greedy(model, tokenizer, samples, max_new_tokens, batch_size, device)
            records += [
                NIAHRecord(variant, s.context_len, s.depth, s.needle_depth, s.answer, g, niah_match(g, s.answer))
                for s, g in zip(samples, generations)
            ]
    finally:
        model.train(was_training)

    by_cell: dict[tuple[str, int, float], list[NIAHRecord]] = defaultdict(list)  # insertion order = grid order
    for r in records:
        by_cell[(r.variant, r.length, r.depth)].append(r)
    cells = [
        NIAHCell(v, length, d, _mean([r.correct for r in rs]), len(rs), sum(r.needle_depth for r in rs) / len(rs))
        for (v, length, d), rs in by_cell.items()
    ]
    by_variant = {v: _mean([r.correct for r in records if r.variant == v]) for v in variants}
    return NIAHResult(
        accuracy=_mean([r.correct for r in records]),
        by_variant=by_variant,
        cells=cells,
        samples=records,
        lengths=lengths,
        depths=depths,
        variants=variants,
        samples_per_cell=samples_per_cell,
        seed=seed,
        haystack=haystack_name,
    )


def _greedy(
    model: nn.Module,
    tokenizer: Tokenizer,
    samples: list[NIAHSample],
    max_new_tokens: int | None,
    batch_size: int,
    device: str | torch.device,
) -> list[str]:
    """Each sample's greedy continuation as text, cut at the first EOS.

    Prompts of one length are batched (they have exactly that many tokens, so no padding). A batch decodes as many
    tokens as its longest budget and each row is then cut to its own budget: rows are independent under greedy
    decoding, so the result does not depend on batch_size.
    """
    budgets = [max_new_tokens or len(s.answer_ids) + ANSWER_SLACK for s in samples]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_length[len(s.prompt_ids)].append(i)
    texts = [""] * len(samples)
    for length, indices in by_length.items():
        for lo in range(0, len(indices), batch_size):
            rows = indices[lo : lo + batch_size]
            prompts = torch.tensor([samples[i].prompt_ids for i in rows], dtype=torch.long, device=device)
            out = model.generate(prompts, max(budgets[i] for i in rows), temperature=0.0)
            for row, i in enumerate(rows):
                ids = out[row, length : length + budgets[i]].tolist()
                if tokenizer.eos_id in ids:
                    ids = ids[: ids.index(tokenizer.eos_id)]
                texts[i] = tokenizer.decode(ids)
    return texts


def _haystack_documents(haystack: str | os.PathLike | Sequence[str]) -> tuple[list[str], str]:
    """(documents, a name for the report) of a corpus name, data spec or document list."""
    if isinstance(haystack, (str, os.PathLike)):
        name = str(haystack)
        if name in CORPORA:
            # sotu's validation addresses: text the model was not trained on, so it cannot answer from memory.
            return load_corpus(name, "validation"), name
        return list(iter_documents(name)), name  # DataError (a ValueError) names a missing or bad file
    documents = list(haystack)
    if not all(isinstance(d, str) for d in documents):
        raise ValueError("haystack must be a corpus name, a data path or a list of document strings")
    return documents, f"{len(documents)} documents"


def _mean(values: list[bool]) -> float:
    return sum(values) / len(values)
