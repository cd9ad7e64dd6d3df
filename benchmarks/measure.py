"""Run `python -m s2s_cli ARGS` in this process and append its peak RSS (KiB) to $S2S_RSS_FILE.

Used by the benchmarks so each measured command's peak memory is its own.
"""

import os
import resource
import runpy
import sys

if __name__ == "__main__":
    sys.argv = ["s2s", *sys.argv[1:]]
    try:
        runpy.run_module("s2s_cli", run_name="__main__")
    finally:
        with open(os.environ["S2S_RSS_FILE"], "a") as f:
            f.write(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")
