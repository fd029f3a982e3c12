"""Tokenizers that work offline: a byte-level BPE trained locally (default) or GPT-2 BPE from a vendored file.

A checkpoint folder holds `tokenizer_meta.json` ({"kind", "vocab_size", "eos_token"}) and, for kind "bpe",
the `tokenizers` library's `tokenizer.json`. Nothing is unpickled and nothing is downloaded.
"""

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

# tokenizers is a Hugging Face library: make sure nothing in the process tries the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import tiktoken  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import decoders, models, pre_tokenizers, trainers  # noqa: E402

from miras.io_atomic import write_text_atomic  # noqa: E402

EOS_TOKEN = "<|endoftext|>"
META_FILE = "tokenizer_meta.json"
BPE_FILE = "tokenizer.json"
KINDS = ("bpe", "gpt2")

GPT2_FILE = Path(__file__).with_name("gpt2.tiktoken")  # from openai-whisper 20250625 (MIT), 835,554 bytes
GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """Text <-> token ids. Text is always encoded as ordinary text: a literal "<|endoftext|>" in the data
    becomes ordinary tokens, so only the data pipeline can insert `eos_id`."""

    def __init__(self, kind: str, backend: HFTokenizer | tiktoken.Encoding, fingerprint: str):
        self.kind = kind
        self._backend = backend
        self.fingerprint = fingerprint  # identity for token caches: sha256 of the vocabulary/merges
        if kind == "bpe":
            backend.encode_special_tokens = True  # not stored in tokenizer.json, so set on every construction
            self.vocab_size = backend.get_vocab_size()
            self.eos_id = backend.token_to_id(EOS_TOKEN)
        else:
            self.vocab_size = backend.n_vocab
            self.eos_id = backend.eot_token
        if self.eos_id is None:
            raise ValueError(f"tokenizer has no {EOS_TOKEN} token")

    @classmethod
    def train(cls, documents: Iterable[str], vocab_size: int = 8192) -> "Tokenizer":
        """Byte-level BPE (GPT-2 pre-tokenization, 256 byte symbols + EOS + merges); deterministic for given input."""
        if vocab_size < 257:
            raise ValueError(f"vocab_size must be >= 257 (256 bytes + EOS), got {vocab_size}")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # no prefix space: exact round trip
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable, even unseen ones
            show_progress=False,
        )
        tok.train_from_iterator(documents, trainer)
        return cls._bpe(tok)

    @classmethod
    def gpt2(cls) -> "Tokenizer":
        """GPT-2's 50257-token BPE, identical ids to OpenAI's (e.g. "Hello world" -> [15496, 995])."""
        data = GPT2_FILE.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != GPT2_SHA256:
            raise ValueError(f"{GPT2_FILE} is corrupt (sha256 {digest}, expected {GPT2_SHA256})")
        # Parse the "<base64 token> <rank>" lines here: tiktoken.load would also copy the file into a temp cache.
        ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in data.splitlines() if line)}
        enc = tiktoken.Encoding(
            name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOS_TOKEN: len(ranks)}
        )
        return cls("gpt2", enc, "gpt2:" + digest)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Reload a tokenizer written by `save` into folder `path`."""
        path = Path(path)
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        if meta.get("kind") not in KINDS:
            raise ValueError(f"{path / META_FILE}: unknown tokenizer kind {meta.get('kind')!r}; expected {KINDS}")
        tok = cls.gpt2() if meta["kind"] == "gpt2" else cls._bpe(HFTokenizer.from_file(str(path / BPE_FILE)))
        if tok.vocab_size != meta["vocab_size"]:
            raise ValueError(f"{path}: vocab_size {tok.vocab_size} does not match {META_FILE} ({meta['vocab_size']})")
        return tok

    @classmethod
    def _bpe(cls, tok: HFTokenizer) -> "Tokenizer":
        return cls("bpe", tok, "bpe:" + hashlib.sha256(tok.to_str().encode()).hexdigest())

    def save(self, path: str | os.PathLike) -> None:
        """Write into folder `path` (created if needed). A gpt2 tokenizer records only its kind."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.kind == "bpe":
            write_text_atomic(path / BPE_FILE, self._backend.to_str(pretty=False))
        meta = {"kind": self.kind, "vocab_size": self.vocab_size, "eos_token": EOS_TOKEN}
        write_text_atomic(path / META_FILE, json.dumps(meta, indent=1) + "\n")

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encodes in parallel (Rust threads in both backends)."""
        if self.kind == "bpe":
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._backend.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        if self.kind == "bpe":
            return self._backend.decode(ids, skip_special_tokens=False)
        return self._backend.decode(ids)

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"
