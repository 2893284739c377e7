"""Score the disentanglement defaults on the four image toys of docs/disentanglement.md, held out and over fresh seeds.

The features grid (``disentangle_grid.py``) is where the defaults were chosen; these toys are images, through a real
timm backbone. For each toy of :data:`TOYS` and each seed pair of ``--seeds`` (the toy's seed, the training's seed;
by default the grid's three, drawn after the defaults were fixed) the script

1. writes the toy with ``d3s toy`` (the flags in :data:`TOYS`, its seed replaced by the pair's);
2. trains the ablation (``--critic-weight 0 --no-erase``) and the defaults (``d3s train`` with no method flags:
   critics, then LEACE, made as the grid makes them: the un-erased run, erased with ``d3s erase --out``), one thread
   each, ``--jobs`` side by side, with the backbone, steps and augmentation of the toy's row;
3. probes each run held out (cross-fitted on validation: the linear probe of all four probes, the MLP and kernel
   probes of the cross ones);

and prints one row per toy, scored against its ablation by the grid's targets (``disentangle_grid.score``), with
mean and spread over seeds and the verdict over every seed, then the worst row. ``--methods`` and ``--common`` work
as the grid's. Resumable as the grid (run folders ``RUNS/<toy>/seed<T>/<method>-<steps>``).

::

    python benchmarks/image_toys.py --out out/itoys
    python benchmarks/image_toys.py --out out/itoys-quick --quick --toys readme --seeds 101:1   # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
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


def toy_flags(toy: ImageToy, seed: int, quick: bool) -> tuple[str, ...]:
    """``d3s toy`` flags of ``toy`` with its seed replaced by ``seed``."""
    flags = list(toy.toy)
    if "--seed" in flags:
        i = flags.index("--seed")
        del flags[i : i + 2]
    return (*flags, "--seed", str(seed), *(QUICK_TOY if quick else ()))


def ensure_toy(toy: ImageToy, quick: bool, root: Path, seed: int) -> Path:
    folder = root / toy.name / f"seed{seed}"
    if not (folder / "d3s_toy.json").exists():
        cmd = [sys.executable, "-m", "d3s", "toy", "--out", str(folder), *toy_flags(toy, seed, quick)]
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
    ap.add_argument("--seeds", metavar="PAIRS", help="TOY:TRAIN seed pairs, as disentangle_grid.py's (default: "
                                                     + ",".join(f"{t}:{s}" for t, s in grid.SEEDS) + ")")
    ap.add_argument("--jobs", type=int, default=2, metavar="N", help="runs side by side, one thread each (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help=f"8 + 4 rows per pair and {QUICK_STEPS} steps: a smoke test")
    args = ap.parse_args(argv)
    try:
        return run(args)
    except grid.GridError as err:
        print(f"image_toys: error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    plan = grid.sweep(args.methods, args.common)
    toys = grid.pick_named(args.toys, TOYS, "--toys")
    seeds = grid.parse_seeds(args.seeds)
    if not 1 <= args.jobs <= 64:
        raise grid.GridError(f"--jobs must be in 1..64, got {args.jobs}.")
    out = Path(args.out)
    toys_dir, runs_dir = out / ("toys-quick" if args.quick else "toys"), out / ("runs-quick" if args.quick else "runs")
    t0 = time.time()
    cells = {t.name: [grid.Cell(t.name, s, r, ensure_toy(t, args.quick, toys_dir, s), QUICK_STEPS if args.quick else t.steps,
                                runs_dir, extra=("--backbone", t.backbone, "--no-pretrained", *t.train)) for s, r in seeds]
             for t in toys}
    order = sorted((c for cs in cells.values() for c in cs), key=lambda c: -c.steps)  # the longest first
    spent = grid.run_sweep(order, plan, args.jobs, f"{len(toys)} toys x {len(seeds)} seeds; runs in {runs_dir}")
    rows, ablations = grid.collect([t.name for t in toys], cells, plan, spent)
    for r in rows:
        r["chosen_on"] = next(t.chosen_on for t in toys if t.name == r["setting"])
    text, last = grid.format_text(rows), grid.worst_line(rows)
    print(text)
    print(last)
    out.mkdir(parents=True, exist_ok=True)
    result = {"toys": [{"name": t.name, "toy": list(t.toy), "backbone": t.backbone, "steps": QUICK_STEPS if args.quick else t.steps,
                        "train": list(t.train), "chosen_on": t.chosen_on} for t in toys],
              "seeds": [list(p) for p in seeds], "quick": args.quick, "common": list(plan.common), "rows": rows,
              "ablations": ablations, "worst_line": last, "seconds": round(time.time() - t0, 1)}
    (out / "image_toys.json").write_text(json.dumps(grid._finite(result), indent=2) + "\n")
    (out / "image_toys.md").write_text(grid.format_markdown(rows, ablations, "# Image toys: the defaults against the ablation, held out"))
    print(f"wrote {out / 'image_toys.json'} and {out / 'image_toys.md'} ({time.time() - t0:.0f} s)", file=sys.stderr)
    missing = any(r["summary"].get("seeds", 0) < r["summary"].get("of", 0) for r in rows + ablations)
    return 1 if missing or any("error" in v for v in spent.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
