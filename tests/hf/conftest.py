"""Shared fixtures of the Hugging Face integration tests (helpers are in tiny.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # any hub access fails at once instead of retrying for minutes

import pytest  # noqa: E402

from miras.data import Tokenizer  # noqa: E402
from tests.hf.tiny import small_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer() -> Tokenizer:
    return small_tokenizer()
