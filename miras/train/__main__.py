"""`python -m miras.train [flags]`: the same as `miras train [flags]`."""

import sys

from miras.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
