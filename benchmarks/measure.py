"""Run `python -m s2s_cli ARGS` in this process and append its peak RSS (KiB) to $S2S_RSS_FILE.

Used by the benchmarks so each measured command's peak memory is its own. The RSS is written by
an atexit callback: s2s ends commands that load torch without the interpreter's teardown
(``exit_without_teardown``), which still runs atexit callbacks but no ``finally`` after it.
"""

import atexit
import os
import resource
import runpy
import sys


def write_peak_rss() -> None:
    with open(os.environ["S2S_RSS_FILE"], "a") as f:
        f.write(f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\n")


if __name__ == "__main__":
    sys.argv = ["s2s", *sys.argv[1:]]
    atexit.register(write_peak_rss)
    runpy.run_module("s2s_cli", run_name="__main__")
