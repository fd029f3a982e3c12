"""Text -> cached, memory-mapped token arrays, and batch samplers over them.

Data spec (the CLI's `--data`): a file, a folder (every *.txt and *.jsonl below it, recursively, sorted by path),
or a glob (`**` recurses). A *.jsonl file holds one JSON object per line with a string "text" field, one document
per line (blank lines skipped); any other file is UTF-8 text and one whole document.

Cache: `<cache_dir>/<key>.bin` holds the token ids as raw little-endian uint16 (uint32 if the vocabulary exceeds
65536), every document followed by EOS; `<key>.json` is its index (dtype, counts, tokenizer, sources) and is
written last, so its presence marks a complete entry. key = sha256(format version, tokenizer fingerprint, the
bytes of every source in order)[:32], so edited data or another tokenizer gets a new entry.
"""

import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from miras.io_atomic import write_file_atomic, write_text_atomic
from miras.progress import progress_bar

from .corpus import CORPORA, SOTU_VAL_EVERY, load_corpus
from .tokenizer import Tokenizer

FORMAT_VERSION = 1
DATA_SUFFIXES = (".txt", ".jsonl")
PATH_SPLITS = ("train", "validation", "all")
PIECE_CHARS = 1 << 18  # long documents are encoded in pieces of about this many chars, in parallel
BATCH_CHARS = 1 << 23  # chars per encode_batch call; bounds the memory held in Python lists of ids


class DataError(ValueError):
    """Unusable input data; the message names the file (and line or byte offset)."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "miras" / "tokens"


# ---------------------------------------------------------------------------------------------------------------
# Reading user data


def resolve_files(spec: str | os.PathLike) -> list[Path]:
    """The files a data spec names, in a fixed order."""
    text = os.path.expanduser(str(spec))
    path = Path(text)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder has no .txt or .jsonl files")
        return files
    if any(c in text for c in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"{text}: glob matches no files")
        return files
    raise DataError(f"{text}: no such file or folder")


def held_out_split(spec: str, data: str) -> str:
    """The split of `spec` that a model trained on `data` (its "train" split) has not seen: a corpus's validation
    split; the held-out part ("validation") when `spec` names the training files, however the path is spelled
    (./x.txt, an absolute path, a glob of the same files); all of it when it shares no file with them. DataError when
    it shares some but not all: the held-out part is a cut of the whole training stream, so part of those files was
    trained on and part was not. When the training files cannot be found any more (a moved or a relative path read
    from elsewhere), the spelling decides."""
    if spec in CORPORA:
        return "validation"
    if data in CORPORA:
        return "all"
    try:
        trained = {p.resolve() for p in resolve_files(data)}
    except DataError:
        return "validation" if spec == data else "all"
    files = {p.resolve() for p in resolve_files(spec)}
    if files == trained:
        return "validation"
    if files & trained:
        raise DataError(
            f"{spec}: shares {len(files & trained)} of its {len(files)} file(s) with the training data "
            f"{data}, whose held-out part is the end of all of them; score {data} itself (its held-out "
            "part) or files it does not hold"
        )
    return "all"


def read_documents(path: Path) -> list[str]:
    """Validated documents of one file (see module docstring for the formats)."""
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(f"{path}: binary file (NUL byte at byte offset {nul}); expected UTF-8 text")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {e.start}") from None
    if path.suffix != ".jsonl":
        return [text]
    docs = []
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and other characters splitlines() breaks at.
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise DataError(f'{path}:{lineno}: expected a JSON object with a string "text" field')
        if obj["text"]:
            docs.append(obj["text"])
    if not docs:
        raise DataError(f'{path}: no non-empty "text" in any line')
    return docs


def iter_documents(spec: str | os.PathLike) -> Iterator[str]:
    """All documents of a data spec, one file in memory at a time (e.g. to train a tokenizer)."""
    for path in resolve_files(spec):
        yield from read_documents(path)


# ---------------------------------------------------------------------------------------------------------------
# Token arrays


def tokenize_files(
    spec: str | os.PathLike, tokenizer: Tokenizer, *, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> np.memmap:
    """All documents of a data spec as one read-only token array [N] (uint16/uint32), tokenized once and cached."""
    files = resolve_files(spec)
    key = _key(tokenizer)
    for path in files:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        key.update(("jsonl" if path.suffix == ".jsonl" else "txt").encode() + digest.digest())
    sizes = [p.stat().st_size for p in files]
    units = ((read_documents(p), n) for p, n in zip(files, sizes))  # read lazily: one file in memory at a time
    sources = [str(p) for p in files]
    return _cached_tokens(key.hexdigest()[:32], units, sum(sizes), sources, tokenizer, cache_dir, progress)


def token_stream(
    source: str | os.PathLike,
    tokenizer: Tokenizer,
    split: str = "train",
    *,
    cache_dir: str | os.PathLike | None = None,
    val_every: int = SOTU_VAL_EVERY,
    val_fraction: float = 0.05,
    progress: bool = True,
) -> np.memmap:
    """Token array [N] of an embedded corpus ("sotu", "wiki": see corpus.py) or of a data spec.

    A data spec has splits "all", "train" and "validation": validation is the last `val_fraction` of the tokens,
    starting at the next document boundary (mid-document only when no boundary is left).
    """
    if str(source) in CORPORA:
        docs = load_corpus(str(source), split, val_every=val_every)
        key, nbytes = _key(tokenizer), 0
        for doc in docs:
            raw = doc.encode()
            key.update(len(raw).to_bytes(8, "little") + raw)
            nbytes += len(raw)
        units = [(docs, nbytes)]
        sources = [f"{source}:{split}"]
        return _cached_tokens(key.hexdigest()[:32], units, nbytes, sources, tokenizer, cache_dir, progress)
    if split not in PATH_SPLITS:
        raise ValueError(f"split must be one of {PATH_SPLITS} for data files, got {split!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    tokens = tokenize_files(source, tokenizer, cache_dir=cache_dir, progress=progress)
    if split == "all":
        return tokens
    if len(tokens) < 2:
        raise DataError(f"{source}: only {len(tokens)} token(s), too few to split")
    cut = min(max(int(len(tokens) * (1 - val_fraction)), 1), len(tokens) - 1)
    starts = np.flatnonzero(tokens[cut - 1 : -1] == tokenizer.eos_id)  # EOS at cut-1+i: a document starts at cut+i
    if len(starts):
        cut += int(starts[0])
    return tokens[:cut] if split == "train" else tokens[cut:]


def _key(tokenizer: Tokenizer):
    return hashlib.sha256(f"miras-tokens-v{FORMAT_VERSION}\0{tokenizer.fingerprint}\0".encode())


def _cached_tokens(
    key: str,
    units: Iterable[tuple[list[str], int]],
    total_bytes: int,
    sources: list[str],
    tokenizer: Tokenizer,
    cache_dir: str | os.PathLike | None,
    progress: bool,
) -> np.memmap:
    """Load entry `key`, or build it from `units` = (documents, their size in bytes, for the progress bar)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    bin_path, index_path = cache_dir / f"{key}.bin", cache_dir / f"{key}.json"
    if index_path.exists():
        index = json.loads(index_path.read_text(encoding="utf-8"))
        dtype = np.dtype(index["dtype"])
        if bin_path.exists() and bin_path.stat().st_size == index["num_tokens"] * dtype.itemsize:
            return np.memmap(bin_path, dtype=dtype, mode="r", shape=(index["num_tokens"],))

    dtype = np.dtype("<u2" if tokenizer.vocab_size <= 1 << 16 else "<u4")
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Durable and atomic (miras/io_atomic.py): readers never see a partial file, and concurrent writers of the same
    # entry write under distinct temporary names and produce identical bytes.
    num_tokens, num_docs = write_file_atomic(
        bin_path, lambda f: _write_tokens(units, total_bytes, tokenizer, f, dtype, progress)
    )
    index = {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,
        "num_tokens": num_tokens,
        "num_documents": num_docs,
        "tokenizer": {
            "kind": tokenizer.kind,
            "fingerprint": tokenizer.fingerprint,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
        },
        "sources": sources,
    }
    write_text_atomic(index_path, json.dumps(index, indent=1) + "\n")
    return np.memmap(bin_path, dtype=dtype, mode="r", shape=(num_tokens,))


def _write_tokens(
    units: Iterable[tuple[list[str], int]], total_bytes: int, tokenizer: Tokenizer, f, dtype: np.dtype, progress: bool
) -> tuple[int, int]:
    """Append every document's ids and an EOS to `f`; returns (tokens, documents) written."""
    num_tokens = num_docs = 0
    with progress_bar(total=total_bytes, unit="B", unit_scale=True, desc="tokenizing", disable=not progress) as bar:
        for docs, nbytes in units:
            pieces = [piece for doc in docs for piece in _pieces(doc)]
            chars = sum(len(p) for p, _ in pieces)
            for group in _groups(pieces):
                for (_, ends_doc), ids in zip(group, tokenizer.encode_batch([p for p, _ in group])):
                    if ends_doc:
                        ids.append(tokenizer.eos_id)
                        num_docs += 1
                    f.write(np.asarray(ids, dtype=dtype).tobytes())
                    num_tokens += len(ids)
                bar.update(nbytes * sum(len(p) for p, _ in group) / max(chars, 1))
    return num_tokens, num_docs


def _pieces(doc: str) -> list[tuple[str, bool]]:
    """(text, ends document) pieces of a document. Long documents are cut before newlines that follow a non-space
    character: GPT-2-style pre-tokenization (both tokenizer kinds) always starts a new pre-token there, so the pieces
    encode to exactly the whole document's ids."""
    pieces, start = [], 0
    while len(doc) - start > PIECE_CHARS:
        cut = doc.find("\n", start + PIECE_CHARS)
        while cut > 0 and doc[cut - 1].isspace():
            cut = doc.find("\n", cut + 1)
        if cut < 0:
            break
        pieces.append(doc[start:cut])
        start = cut
    pieces.append(doc[start:])
    return [(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]


def _groups(pieces: list[tuple[str, bool]]) -> Iterator[list[tuple[str, bool]]]:
    """Consecutive runs of pieces of at most BATCH_CHARS chars (at least one piece each)."""
    group, chars = [], 0
    for piece in pieces:
        if group and chars + len(piece[0]) > BATCH_CHARS:
            yield group
            group, chars = [], 0
        group.append(piece)
        chars += len(piece[0])
    if group:
        yield group


# ---------------------------------------------------------------------------------------------------------------
# Batches


class TokenBatches:
    """Random training windows. `batch(step)` depends only on (seed, step), so a resumed run continues exactly by
    asking for the next step; no sampler state needs saving."""

    def __init__(self, tokens: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        if len(tokens) < seq_len + 1:
            raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens, got {len(tokens)}")
        self.tokens, self.batch_size, self.seq_len, self.seed = tokens, batch_size, seq_len, seed

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), both int64 [B, T]; labels are the inputs shifted left by one token."""
        rng = np.random.default_rng((self.seed, step))
        starts = rng.integers(0, len(self.tokens) - self.seq_len, size=self.batch_size)  # window = T + 1 tokens
        return window_tokens(self.tokens, starts, self.seq_len)


def window_tokens(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) [len(starts), seq_len] int64 of the (seq_len + 1)-token windows at `starts`; labels are
    the inputs shifted left by one token. The one window reader: training batches and evaluation use it."""
    rows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int64)  # [B, T + 1]
    return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())  # contiguous, own memory
