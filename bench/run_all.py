"""Run every benchmark of this directory with its defaults, one after the other.

    .venv/bin/python bench/run_all.py   (what `make bench` runs)

Each `*_bench.py` is a script of its own that starts and stops what it needs; a failing
one is reported and the others still run. Exit status 1 when any failed.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time


def main() -> int:
    here = pathlib.Path(__file__).resolve().parent
    failed = []
    for script in sorted(here.glob("*_bench.py")):
        print(f"\n######## {script.name}", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, str(script)], check=False)
        print(
            f"######## {script.name}: exit {result.returncode} in {time.monotonic() - started:.0f}s"
        )
        if result.returncode != 0:
            failed.append(script.name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
