"""Model-level benchmarks (training tokens/s, decode latency vs context):
`python benchmarks/bench_model.py [--full] [--model-size small] [miras bench flags]`."""

import sys

from miras.bench import main

if __name__ == "__main__":
    sys.exit(main(["--only", "model", *sys.argv[1:]]))
