"""`python -m miras COMMAND ...`: the `miras` command without its installed entry point, from a checkout on PYTHONPATH
(e.g. on a GPU machine whose own PyTorch build must stay: `PYTHONPATH=. python -m miras bench --device cuda`)."""

import sys

from miras.cli import main

sys.exit(main())
