"""Op-level benchmarks: `python benchmarks/bench_ops.py [--full] [--compile] [miras bench flags]`.

The same as `miras bench` without the model section, then this project's targets checked on the results
(targets.py); flags after the script name override (an explicit --only too).
"""

import sys

from targets import report_after  # benchmarks/, the script's own folder

from miras.bench import main

if __name__ == "__main__":
    sys.exit(report_after(main, ["--only", "grid", "naive", "linear", "titans", "memory", "compile", *sys.argv[1:]]))
