"""Run every speed benchmark in turn (``make bench``); each prints its own ratios.

The accuracy table is separate (``python benchmarks/accuracy.py``): it trains six models and takes
about an hour on 2 cores. Pass ``--quick`` for a smoke run of the speed benchmarks.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEED = ("bench_preprocess.py", "bench_cold_start.py", "bench_scoring.py", "bench_live.py")
QUICK_FLAG = {"bench_preprocess.py": ["--quick"], "bench_scoring.py": ["--quick"], "bench_live.py": ["--frames", "60"]}


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    from edgereg.core.platform_info import runtime_line

    print(runtime_line(), flush=True)  # the CPU and instruction set behind every number below
    failed = []
    for script in SPEED:
        print(f"\n##### {script}", flush=True)
        extra = QUICK_FLAG.get(script, []) if quick else []
        if subprocess.run([sys.executable, str(HERE / script), *extra]).returncode:
            failed.append(script)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
