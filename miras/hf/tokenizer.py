"""The tokenizer files of a Hugging Face folder: the miras tokenizer's own, plus what AutoTokenizer reads.

The folder keeps `tokenizer_meta.json` (and, for kind "bpe", the `tokenizers` file `tokenizer.json`), so
`miras.data.Tokenizer.load(folder)` reads it as it reads a run's tokenizer/ folder. `tokenizer_config.json` makes
`AutoTokenizer.from_pretrained(folder)` build a PreTrainedTokenizerFast with the same ids:
- bpe: tokenizer.json is already the format transformers reads;
- gpt2: miras uses tiktoken with a vendored vocabulary; tokenizer.json is converted from it with transformers'
  TikTokenConverter (miras itself keeps using tiktoken: Tokenizer.load ignores the file for this kind).
Settings that make the two agree: split_special_tokens (miras encodes a literal "<|endoftext|>" in text as ordinary
tokens; only the data pipeline inserts EOS), no BOS added, and clean_up_tokenization_spaces off (decode is the
exact inverse of encode). EOS is also the pad token (right padding only, see modeling.py) and the BOS of generate():
training data has EOS between documents, so it is what starts one.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.convert_slow_tokenizer import TikTokenConverter

from miras.data.tokenizer import BPE_FILE, EOS_TOKEN, GPT2_PATTERN, Tokenizer

HF_CONFIG_FILE = "tokenizer_config.json"


def save_hf_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """Write the miras tokenizer and the files AutoTokenizer needs into `folder`."""
    tokenizer.save(folder)
    if tokenizer.kind == "gpt2":
        _GPT2Converter(tokenizer).converted().save(str(folder / BPE_FILE))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "split_special_tokens": True,
        "clean_up_tokenization_spaces": False,
    }
    (folder / HF_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


class _GPT2Converter(TikTokenConverter):
    """TikTokenConverter reading the ranks from the miras tokenizer rather than a file: tiktoken's file loader would
    copy the vocabulary into a cache folder under /tmp."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        super().__init__(pattern=GPT2_PATTERN, extra_special_tokens=[EOS_TOKEN])
        self.ranks = tokenizer._backend._mergeable_ranks  # the name transformers' own tiktoken converter reads

    def load_tiktoken_bpe(self, tiktoken_url: str) -> dict[bytes, int]:
        return self.ranks
