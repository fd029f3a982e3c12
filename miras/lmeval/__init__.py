"""lm-evaluation-harness integration: the registered lm-eval model "miras" and the paper's zero-shot suite, offline.

Importing this package registers the model with lm-eval, so `python -m miras.lmeval --model miras` finds it; plain
`lm_eval` does not import miras (README.md here says why). Needs the `eval` extra: pip install 'miras[eval]'.
"""

from pathlib import Path

try:
    from miras.lmeval.model import MirasEvalLM, load_model_and_tokenizer
except ImportError as e:  # lm-eval is an optional extra
    raise ImportError(f"miras.lmeval needs lm-eval: pip install 'miras[eval]' ({e})") from e

# The YAMLs of the zero-shot suite (tasks miras_wiki, miras_lambada, miras_piqa, ...; tag miras_zeroshot), for
# lm-eval's TaskManager(include_path=...) / --include_path.
TASKS_DIR = Path(__file__).with_name("tasks")

__all__ = ["TASKS_DIR", "MirasEvalLM", "load_model_and_tokenizer"]
