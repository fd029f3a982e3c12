"""`python -m miras.lmeval ARGS`: lm-eval's own command line (`lm_eval ARGS`), with the zero-shot suite's tasks.

When ARGS name no --include_path, the suite's task folder is added, so `--tasks miras_zeroshot` (or miras_piqa, ...)
works. Importing miras.lmeval registers lm-eval's model "miras", and importing miras.hf.auto teaches transformers
model_type "miras", so `--model hf --model_args pretrained=HF_DIR` loads a folder from `miras convert to-hf`. Plain
`lm_eval` knows neither (README.md here).
"""

import sys

from lm_eval.__main__ import cli_evaluate

import miras.hf.auto  # noqa: F401  (registers model_type "miras" with transformers' Auto classes, for --model hf)
from miras.lmeval import TASKS_DIR  # importing registers lm-eval's model "miras"

args = sys.argv[1:]
# Fewer than two arguments is a help request, which must stay as it is (lm-eval turns any longer line into `run`).
if len(args) >= 2 and not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
    sys.argv += ["--include_path", str(TASKS_DIR)]
cli_evaluate()
