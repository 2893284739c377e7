"""How far LEACE's guarantee carries to rows it was not fitted on: held-out linear leakage after erasure against the
train rows per class and the design of the data (every row a new object, or each object on every background).

LEACE makes every class's mean of the erased part equal **on the rows it is fitted on**, so a linear probe fitted
there reads chance by construction. On other rows the class means differ by what the fit's estimate missed: with k
classes and D features, the estimated mean of each class is off by noise of about (within-class spread)^2 x D / n
for n rows per class, and held out a probe reads whatever part of the true difference that noise turned away from
the erased directions. When each object appears on every background, the object's own variation (most of a
foreground part's spread) is the same in every background's mean and cancels from their differences.

The features toys of ``d3s toy --kind features`` (paper sizes: 2048 features, 1000 fg x 10 bg) stand in for an
extractor's z: z_fg is the first 1798 raw features and z_bg the last 250 (the partition a frozen-features
``d3s train`` starts from), where the background is strongly encoded. For each regime, each ``--rows`` (train rows
per (fg, bg) pair: a bg class has 1000 x rows, a fg class 10 x rows) and each design, the script writes the toy
(2 validation rows per pair), fits both erasers on train (``d3s.erase.fit_eraser``, the package's defaults) and
reads, with the linear probe cross-fitted on validation (2 folds; ``d3s.probes``), bg from z_fg and fg from z_bg,
before and after erasure; ``after (train-fitted)`` is the same probe fitted on the erased train rows, the check that
cannot fail; for paired data, ``after (folds split objects)`` is the held-out probe with folds cut by row rather than
by object, which puts an object's other backgrounds in the probe's fit rows and reads below chance. One thread; the
table goes to ``--out``/erasure_rows.md and .json.

::

    python benchmarks/erasure_rows.py --out out/erasure-rows                     # 2 regimes x 4 sizes x 2 designs
    python benchmarks/erasure_rows.py --out out/erasure-rows-quick --quick       # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's d3s, not an installed one

REGIMES = {  # name: `d3s toy --kind features` knobs beside the sizes
    "strong-bg relu1": {"mixing": "relu1", "bg_scale": 2.5},
    "default relu2": {},
}
PAPER = {"fg_classes": 1000, "bg_classes": 10, "dim": 2048}
QUICK = {"fg_classes": 40, "bg_classes": 10, "dim": 256}
SEED = 301  # a toy seed no other measurement used


def part_sizes(dim: int) -> int:
    """The width of z_fg for ``dim`` features: the paper's 1798 of 2048."""
    return dim * 1798 // 2048


def measure(regime: str, rows: int, paired: bool, quick: bool, root: Path, seed: int = SEED) -> dict:
    from d3s.data import FeatureTable, groups_of, load_split
    from d3s.erase import fit_eraser
    from d3s.probes import FitRows, run_probes
    from d3s.toy import FeatureToyConfig, write_feature_toy

    size = QUICK if quick else PAPER
    folder = root / f"toy-{regime.replace(' ', '-')}-{rows}-{'paired' if paired else 'unpaired'}"
    cfg = FeatureToyConfig(out=str(folder), **size, **REGIMES[regime], train_per_pair=rows, val_per_pair=2, paired=paired, seed=seed)
    if folder.exists():
        shutil.rmtree(folder)
    t = time.time()
    write_feature_toy(cfg)
    tables = {s: FeatureTable(load_split(str(folder), s)) for s in ("train", "validation")}
    k = part_sizes(cfg.dim)

    def parts(table, erasers=None):
        z_fg, z_bg = table.x[:, :k], table.x[:, k:]
        if erasers:
            z_fg, z_bg = erasers[0](z_fg.double()).float(), erasers[1](z_bg.double()).float()
        groups = groups_of(table.ds)  # folds keep an object's rows together
        return {"z_fg": z_fg, "z_bg": z_bg, "fg": table.fg, "bg": table.bg, **({"group": groups} if groups is not None else {})}

    train = parts(tables["train"])
    erasers = (fit_eraser(train["z_fg"], train["bg"], cfg.bg_classes, progress=False),
               fit_eraser(train["z_bg"], train["fg"], cfg.fg_classes, progress=False))
    names = ("bg_from_fg", "fg_from_bg")
    before = run_probes({"validation": parts(tables["validation"])}, names=names)["linear"]
    after = run_probes({"validation": parts(tables["validation"], erasers)}, names=names)["linear"]
    train_fitted = run_probes({"validation": parts(tables["validation"], erasers)}, FitRows(split="train"),
                              parts(tables["train"], erasers), names=names)["linear"]
    by_row = None
    if paired:  # folds that split an object's rows: what a row-wise cross-fit reads on paired data
        rows_only = {k: v for k, v in parts(tables["validation"], erasers).items() if k != "group"}
        by_row = run_probes({"validation": rows_only}, names=("bg_from_fg",))["linear"]["validation"]["bg_from_fg"]["top1"]
    shutil.rmtree(folder)  # up to 650 MB a toy
    row = {"regime": regime, "rows_per_pair": rows, "paired": paired, "rows_per_bg_class": rows * cfg.fg_classes,
           "rows_per_fg_class": rows * cfg.bg_classes, "z_fg": k, "z_bg": cfg.dim - k, "chance": before["chance"],
           "seconds": round(time.time() - t, 1)}
    for name in names:
        row[name] = {"before": before["validation"][name]["top1"], "after": after["validation"][name]["top1"],
                     "after_train_fitted": train_fitted["validation"][name]["top1"]}
    row["bg_from_fg"]["after_folds_by_row"] = by_row
    return row


COLUMNS = ("regime", "design", "rows / bg class", "bg_from_fg before", "after (held out)", "after (train-fitted)",
           "after (folds split objects)", "rows / fg class", "fg_from_bg before", "after (held out)", "after (train-fitted)")


def cells(r: dict) -> list[str]:
    b, f = r["bg_from_fg"], r["fg_from_bg"]
    by_row = b.get("after_folds_by_row")
    return [r["regime"], "paired" if r["paired"] else "unpaired", str(r["rows_per_bg_class"]), f"{b['before']:.3f}",
            f"{b['after']:.3f}", f"{b['after_train_fitted']:.3f}", "-" if by_row is None else f"{by_row:.3f}",
            str(r["rows_per_fg_class"]), f"{f['before']:.3f}", f"{f['after']:.3f}", f"{f['after_train_fitted']:.3f}"]


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|---|---|" + "---:|" * (len(COLUMNS) - 2)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch
    from tqdm.auto import tqdm

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, metavar="DIR", help="erasure_rows.md and .json go here (rows already measured are kept)")
    ap.add_argument("--rows", default="1,2,4,8", metavar="LIST", help="train rows per (fg, bg) pair (default: %(default)s)")
    ap.add_argument("--regimes", default=",".join(REGIMES), metavar="LIST", help=f"of {', '.join(REGIMES)} (default: all)")
    ap.add_argument("--designs", default="unpaired,paired", metavar="LIST", help="unpaired, paired or both (default: %(default)s)")
    ap.add_argument("--quick", action="store_true", help=f"tiny toys ({QUICK['fg_classes']} fg x {QUICK['bg_classes']} bg, {QUICK['dim']}-d)")
    args = ap.parse_args(argv)
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [r for r in regimes if r not in REGIMES]
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if bad or not regimes or any(d not in ("unpaired", "paired") for d in designs) or not designs:
        print(f"erasure_rows: error: --regimes takes {', '.join(REGIMES)}; --designs takes unpaired, paired", file=sys.stderr)
        return 2
    sizes = [int(v) for v in args.rows.split(",")]
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / "erasure_rows.json"
    done = {(r["regime"], r["rows_per_pair"], r["paired"], r.get("quick", False)): r
            for r in (json.loads(done_file.read_text())["rows"] if done_file.exists() else [])}
    todo = [(g, n, d == "paired") for g in regimes for d in designs for n in sizes]
    for regime, n, paired in tqdm(todo, desc="toys", unit="toy"):
        key = (regime, n, paired, args.quick)
        if key not in done:
            done[key] = {**measure(regime, n, paired, args.quick, out), "quick": args.quick}
            done_file.write_text(json.dumps({"rows": list(done.values())}, indent=2) + "\n")
    rows = [done[(g, n, p, args.quick)] for g, n, p in todo]
    size = QUICK if args.quick else PAPER
    header = (f"LEACE fitted on train, linear probes (d3s.probes) on validation, 2 validation rows per pair; toys "
              f"{size['dim']}-d, {size['fg_classes']} fg x {size['bg_classes']} bg, seed {SEED}; z_fg the first "
              f"{part_sizes(size['dim'])} features; chance bg {rows[0]['chance']['bg']:.3f}, fg {rows[0]['chance']['fg']:.3f}.")
    text = markdown(rows, header)
    (out / "erasure_rows.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
