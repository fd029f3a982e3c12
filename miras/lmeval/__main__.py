"""`python -m miras.lmeval ARGS`: lm-eval's own command line (`lm_eval ARGS`), with the model "miras" registered.

lm-eval 0.4.13 finds models only in its own list or among registrations made in the running process (no entry
points: upstream issue #1621, PR #3672), so plain `lm_eval --model miras` cannot find ours. When ARGS name no
--include_path, the zero-shot suite's task folder is added, so `--tasks miras_zeroshot` (or miras_piqa, ...) works.
"""

import sys

from lm_eval.__main__ import cli_evaluate

from miras.lmeval import TASKS_DIR  # importing registers "miras"

args = sys.argv[1:]
# Fewer than two arguments is a help request, which must stay as it is (lm-eval turns any longer line into `run`).
if len(args) >= 2 and not any(a == "--include_path" or a.startswith("--include_path=") for a in args):
    sys.argv += ["--include_path", str(TASKS_DIR)]
cli_evaluate()
