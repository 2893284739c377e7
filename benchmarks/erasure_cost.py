"""What the erasure report costs at the end of ``d3s train``, beside the training it ends, at the paper's sizes.

``d3s train`` with the defaults fits LEACE erasers after its last step and reports the heads and the held-out
leakage probes before and after (``erasure.json``). This script writes a features toy at the paper's sizes (2048
features, 1000 fg x 10 bg, ``--train-per-pair`` 2: 20,000 train rows, 20 per fg class; 10,000 validation rows), runs
``d3s train`` on it with the defaults on one thread, and prints the two times the run records in ``done.json`` (the
training loop, and the erasers with their report) and their ratio, measured in the same process one after the other.

::

    python benchmarks/erasure_cost.py --out out/erasure-cost              # 2000 steps, d3s train's own length
    python benchmarks/erasure_cost.py --out out/erasure-cost-quick --quick  # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.1  # the report may cost at most this share of the training it ends


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, metavar="DIR", help="the toy and the run go here (remade each time)")
    ap.add_argument("--iters", type=int, default=2000, help="d3s train --iters (default: %(default)s, its own default)")
    ap.add_argument("--train-per-pair", type=int, default=2, help="train rows per (fg, bg) pair (default: %(default)s)")
    ap.add_argument("--erase-probe", default="linear", help="d3s train --erase-probe (default: %(default)s, its own default)")
    ap.add_argument("--quick", action="store_true", help="40 fg x 10 bg, 256 features, 60 steps: a smoke test")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    size = ["--fg-classes", "40", "--dim", "256"] if args.quick else []
    iters = 60 if args.quick else args.iters
    toy = [sys.executable, "-m", "d3s", "toy", "--kind", "features", "--out", str(out / "toy"), "--train-per-pair",
           str(args.train_per_pair), "--seed", "7", *size]
    subprocess.run(toy, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    train = [sys.executable, "-m", "d3s", "train", "--data", str(out / "toy"), "--out", str(out / "run"), "--iters", str(iters),
             "--no-progress", "--erase-probe", args.erase_probe, *(["--warmup", "10", "--critic-ramp", "20"] if args.quick else [])]
    proc = subprocess.run(train, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return 1
    done = json.loads((out / "run" / "done.json").read_text())
    training, erasure = done["seconds_this_run"], done["erasure"]["seconds"]
    report = json.loads((out / "run" / "erasure.json").read_text())
    probes = ", ".join(report.get("probes", {}).get("after", {})) or "none"
    print(f"d3s train, {iters} steps on {report['rows']} train rows (one thread): training {training:.1f} s, "
          f"erasers and their report ({probes} probes, held out) {erasure:.1f} s")
    if args.quick:  # a handful of steps: the ratio says nothing about the paper's sizes
        print(f"ratio {erasure / training:.3f} (--quick: not judged)")
        return 0
    print(f"ratio {erasure / training:.3f} (target <= {TARGET})")
    return 0 if erasure <= TARGET * training else 1


if __name__ == "__main__":
    sys.exit(main())
