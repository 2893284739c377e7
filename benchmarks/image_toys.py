"""Score the disentanglement defaults on the four image toys of docs/disentanglement.md (issue 17, acceptance 4).

The features grid (``disentangle_grid.py``) is where the defaults were chosen; these toys are images, through a real
timm backbone, and two of them played no part in choosing anything. For each toy of :data:`TOYS` the script

1. writes it with ``d3s toy`` (the flags in :data:`TOYS`; kept and reused when the folder has its ``d3s_toy.json``);
2. trains the defaults (``d3s train`` with no method flags: critics, then LEACE) and the ablation (``--critic-weight 0
   --no-erase``), seed 0, one thread each, ``--jobs`` side by side, with the backbone, steps and augmentation of the
   toy's row;
3. probes each with ``d3s probe --probe both``;

and prints one row per toy, scored against its ablation by the grid's targets (``disentangle_grid.score``: linear ff
within 0.05 of the ablation's, bb >= 0.90, linear cross probes at most 0.02 over chance where LEACE's eraser is
complete, MLP mean cross excess at most 0.75 of the ablation's), then the worst row. ``--methods`` and ``--common``
work as the grid's. Resumable as the grid (run folders ``RUNS/<toy>/<method>-<steps>``).

Measured on this project's 2-core machine: the four toys, defaults and ablations (8 runs, 2 jobs) in 627 s, every
number equal to the same runs made by hand with ``--erase-probe both`` (the table in docs/disentanglement.md).

::

    python benchmarks/image_toys.py --out out/itoys
    python benchmarks/image_toys.py --out out/itoys-quick --quick --toys readme   # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import disentangle_grid as grid  # noqa: E402  (the runs, the probes' numbers, the targets and the table)


@dataclass(frozen=True)
class ImageToy:
    """One image toy of the docs' table.

    Args:
        name (`str`): row name (``--toys`` picks by it; the toy's and its runs' folder name).
        toy (`tuple`): ``d3s toy`` flags.
        backbone (`str`): timm name, trained from scratch (``--no-pretrained``).
        steps (`int`): ``d3s train --iters``.
        train (`tuple`, defaults to ``()``): other ``d3s train`` flags of the row (its augmentation).
        chosen_on (`bool`, defaults to `True`): whether the toy played a part in choosing the defaults.
    """

    name: str
    toy: tuple[str, ...]
    backbone: str
    steps: int
    train: tuple[str, ...] = ()
    chosen_on: bool = True


TOYS: tuple[ImageToy, ...] = (
    ImageToy("readme", (), "test_resnet", 2500, ("--crop-scale", "1")),
    ImageToy("64px", ("--size", "64"), "test_resnet", 1500),
    ImageToy("resnet10t-5x5", ("--shapes", "star,bar,diamond,ring,cross", "--textures", "plain,blobs,grid,diagonal,dots"),
             "resnet10t", 1500, chosen_on=False),
    ImageToy("6x4", ("--shapes", "circle,triangle,ring,diamond,bar,star", "--textures", "checker,dots,diagonal,blobs",
                     "--seed", "3"), "test_resnet", 2500, chosen_on=False),
)
QUICK_TOY = ("--train-per-pair", "8", "--val-per-pair", "4")  # --quick: 200 + 100 rows on 5 x 5, a smoke test
QUICK_STEPS = 3


def ensure_toy(toy: ImageToy, quick: bool, root: Path) -> Path:
    folder = root / toy.name
    if not (folder / "d3s_toy.json").exists():
        cmd = [sys.executable, "-m", "d3s", "toy", "--out", str(folder), *toy.toy, *(QUICK_TOY if quick else ())]
        proc = subprocess.run(cmd, cwd=grid.REPO, env=grid.thread_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise grid.GridError(f"d3s toy failed for {toy.name}: {proc.stderr.strip().splitlines()[-1:]}")
    return folder


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, metavar="DIR", help="toys, runs, image_toys.json go here (rerun to resume)")
    ap.add_argument("--methods", default=grid.DEFAULTS, metavar="LIST", help="as disentangle_grid.py's (default: %(default)s)")
    ap.add_argument("--common", metavar="NAME=FLAGS", help="as disentangle_grid.py's: flags for every run, the ablation included")
    ap.add_argument("--toys", metavar="NAMES", help=f"run only these: {', '.join(t.name for t in TOYS)} (default: all)")
    ap.add_argument("--jobs", type=int, default=2, metavar="N", help="runs side by side, one thread each (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help=f"8 + 4 rows per pair and {QUICK_STEPS} steps: a smoke test")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except grid.GridError as err:
        print(f"image_toys: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    ablation, methods, common = grid.sweep(args.methods, args.common)
    everything = {ablation[0]: ablation[1], **methods}
    toys = grid.pick_named(args.toys, TOYS, "--toys")
    if not 1 <= args.jobs <= 64:
        raise grid.GridError(f"--jobs must be in 1..64, got {args.jobs}.")
    out = Path(args.out)
    toys_dir, runs_dir = out / ("toys-quick" if args.quick else "toys"), out / ("runs-quick" if args.quick else "runs")
    t0 = time.time()
    folders = {t.name: ensure_toy(t, args.quick, toys_dir) for t in toys}

    def flags_of(toy: ImageToy, m: str) -> tuple[str, ...]:
        return ("--backbone", toy.backbone, "--no-pretrained", "--seed", "0", *toy.train, *everything[m])

    def steps_of(toy: ImageToy) -> int:
        return QUICK_STEPS if args.quick else toy.steps

    jobs = [(t, m) for t in toys for m in everything
            if not (grid.run_folder(runs_dir, t.name, m, steps_of(t)) / "probe.json").exists()]
    print(f"{len(toys)} toys x {len(everything)} runs ({', '.join(everything)}); {len(toys) * len(everything) - len(jobs)} "
          f"already probed, {len(jobs)} to do with {args.jobs} jobs; runs in {runs_dir}", flush=True)
    errors = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(grid.do_run, folders[t.name], grid.run_folder(runs_dir, t.name, m, steps_of(t)), steps_of(t),
                               flags_of(t, m)): (t.name, m) for t, m in sorted(jobs, key=lambda j: -j[0].steps)}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="runs", unit="run", disable=not futures):
            if "error" in (spent := fut.result()):
                errors.append(f"{futures[fut][0]} / {futures[fut][1]}: {spent['error']}")
                print(errors[-1], file=sys.stderr, flush=True)

    rows = []
    for t in toys:
        abl = grid.probe_numbers(grid.run_folder(runs_dir, t.name, ablation[0], steps_of(t)))
        for m in methods:
            run_dir = grid.run_folder(runs_dir, t.name, m, steps_of(t))
            numbers = grid.probe_numbers(run_dir)
            row = {"setting": t.name, "method": m, "chosen_on": t.chosen_on, "numbers": numbers, "ablation": abl,
                   "complete_erasers": sorted(grid.complete_erasers(run_dir)), "run": str(run_dir),
                   "flags": list(flags_of(t, m)), "steps": steps_of(t)}
            if numbers is not None and abl is not None:
                row["score"] = grid.score(numbers, abl, frozenset(row["complete_erasers"]))
            rows.append(row)
    text, last = grid.format_text(rows), grid.worst_line(rows)
    print(text)
    print(last)
    out.mkdir(parents=True, exist_ok=True)
    result = {"toys": [{"name": t.name, "toy": list(t.toy), "backbone": t.backbone, "steps": steps_of(t), "train": list(t.train),
                        "chosen_on": t.chosen_on} for t in toys],
              "quick": args.quick, "common": list(common), "rows": rows, "worst_line": last, "seconds": round(time.time() - t0, 1)}
    (out / "image_toys.json").write_text(json.dumps(grid._finite(result), indent=2) + "\n")
    print(f"wrote {out / 'image_toys.json'} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return 1 if errors or any(r["numbers"] is None or r["ablation"] is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
