"""Model-level benchmarks (training tokens/s, decode latency vs context), then this project's targets checked on the
results (targets.py): `python benchmarks/bench_model.py [--full] [--model-size small] [miras bench flags]`."""

import sys

from targets import report_after  # benchmarks/, the script's own folder

from miras.bench import main

if __name__ == "__main__":
    sys.exit(report_after(main, ["--only", "model", *sys.argv[1:]]))
