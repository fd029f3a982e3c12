"""Data layer: embedded corpora, tokenizers, cached token arrays and batch samplers."""

from .corpus import CORPORA, SOTU_VAL_EVERY, load_corpus
from .shards import (
    DataError,
    TokenBatches,
    default_cache_dir,
    held_out_split,
    iter_documents,
    read_documents,
    resolve_files,
    token_stream,
    tokenize_files,
    window_tokens,
)
from .tokenizer import EOS_TOKEN, Tokenizer

__all__ = [
    "CORPORA",
    "EOS_TOKEN",
    "SOTU_VAL_EVERY",
    "DataError",
    "TokenBatches",
    "Tokenizer",
    "default_cache_dir",
    "held_out_split",
    "iter_documents",
    "load_corpus",
    "read_documents",
    "resolve_files",
    "token_stream",
    "tokenize_files",
    "window_tokens",
]
