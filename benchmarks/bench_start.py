#!/usr/bin/env python
"""Start-up time of each ``neurflow`` command (issue 14, "a lighter start").

Runs ``neurflow --help``, ``neurflow COMMAND --help`` for every command and ``neurflow layers
zoo:fashion-cnn`` (the lightest command that has to import torch) in fresh processes, three times
each, and prints the median wall time in seconds.  ``--json FILE`` also writes them.

    .venv/bin/python benchmarks/bench_start.py
    .venv/bin/python benchmarks/bench_start.py --repeat 5 --json benchmarks/results/start.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMMANDS = ("run", "demo", "layers", "show", "report", "debug", "audit", "label", "eval")
CASES = (("--help",), *((c, "--help") for c in COMMANDS), ("layers", "zoo:fashion-cnn"))


def time_once(args: tuple[str, ...]) -> float:
    """Seconds of one ``python -m neurflow.cli ARGS`` in a fresh interpreter (what the console script runs)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "neurflow.cli", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"neurflow {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per command; the median is printed (default 3)")
    ap.add_argument("--json", metavar="FILE", help="also write {command: median seconds} here")
    opts = ap.parse_args(argv)
    results = {}
    for case in CASES:
        times = [time_once(case) for _ in range(opts.repeat)]
        name = "neurflow " + " ".join(case)
        results[name] = round(statistics.median(times), 3)
        print(f"{results[name]:6.2f} s  {name}", flush=True)
    if opts.json:
        os.makedirs(os.path.dirname(os.path.abspath(opts.json)), exist_ok=True)
        with open(opts.json, "w") as f:
            json.dump({"repeat": opts.repeat, "median_s": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
