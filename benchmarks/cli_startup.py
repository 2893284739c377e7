"""How long ``d3s --help`` takes against a bare Python start, side by side.

Runs ``python -m d3s --help`` and ``python -c "import argparse"`` alternately (5 times each by default, this
checkout's d3s) and prints the median wall time of each and their ratio; the last line is ``ratio <d3s / python>``
(target: at most 3). ``d3s --help`` must not import torch, datasets or numpy: the command line reads its choices
from ``d3s/choices.py`` and builds only the options of the command asked for.

    python benchmarks/cli_startup.py
    python benchmarks/cli_startup.py --runs 9 --command "train --help"
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def wall(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each (default: %(default)s)")
    ap.add_argument("--command", default="--help", help="the d3s arguments to time (default: %(default)s)")
    args = ap.parse_args()
    d3s = [sys.executable, "-m", "d3s", *shlex.split(args.command)]
    bare = [sys.executable, "-c", "import argparse"]
    wall(d3s), wall(bare)  # warm the file cache
    times: dict[str, list[float]] = {"d3s": [], "python": []}
    for _ in range(args.runs):
        times["d3s"].append(wall(d3s))
        times["python"].append(wall(bare))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"d3s {args.command}: median {1000 * med['d3s']:.0f} ms over {args.runs} runs")
    print(f"python -c 'import argparse': median {1000 * med['python']:.0f} ms")
    print(f"ratio {med['d3s'] / med['python']:.2f}")


if __name__ == "__main__":
    main()
