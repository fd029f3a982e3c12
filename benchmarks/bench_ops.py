"""Op-level benchmarks: `python benchmarks/bench_ops.py [--full] [--compile] [miras bench flags]`.

The same as `miras bench` without the model section; flags after the script name override (an explicit --only too).
"""

import sys

from miras.bench import main

if __name__ == "__main__":
    sys.exit(main(["--only", "grid", "naive", "linear", "titans", "memory", "compile", *sys.argv[1:]]))
