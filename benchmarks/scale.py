"""Does a command's cost per row stay flat from 1K to 100K rows? Time per row and peak memory of each stage.

Builds D3S folders of 1K, 10K and 100K rows (and a 100-row *base* folder) without diffusion: the shards, card and
``d3s_run.json`` that ``d3s generate --model tiny --size 16`` would write for its plan (same item ids, seeds,
prompts, provenance columns, shard names), with 16x16 PNG images and guides taken from a few precomputed ones. Each
folder has C classes x 10 backgrounds x 10 images per pair (C = rows / 100), so ``d3s split`` puts 2 of every 10 in
``validation`` (and, with no check removing any, in ``benchmark``). Then, per size, each stage in a process of its own:

- ``dry-run``        ``d3s generate --dry-run`` for the folder's plan;
- ``resume``         the folder's own ``d3s generate`` command over the finished folder (it must find nothing to do);
- ``score``          ``d3s score --clip clip:tiny --no-pretrained`` (decodes every image; shards rewritten in place);
- ``split``          ``d3s split --max-rank 1000`` into a new folder (every validation row passes);
- ``benchmark``      ``d3s benchmark --models test_resnet --no-pretrained --batch-size 32`` on its ``benchmark`` split
                     (a fifth of the rows); its images decoded at 160 px take rows x 3 x 160 x 160 bytes;
- ``browse-open``    the app's Dataset tab (``make_browse_fn``), first request: the folder is opened (``open_view``);
- ``browse``         then one request per class, per background, per (class, background): per request;
- ``review-open``    the app's Review tab (``make_review_fns``) with a store holding one reviewer's answers to the first
                     half of the items: the first ``show`` (dataset key, ``open_view``, the next image);
- ``review``         then one answer and the next image after it: per answer.

The CLI stages run as ``d3s.cli.main`` in a child that has already imported what the stage imports anyway (torch,
timm, datasets, ...), timed around ``main`` alone (``--dry-run`` and the resume, which change nothing, 5 times in their
child, fastest kept); the app stages time the handler calls. Each time is taken twice: wall seconds, and CPU seconds
(user + system, every thread of the child: ``time.process_time``), which other jobs on a shared machine barely move;
the per-row times and the ratios are CPU. Peak memory is each child's own maximum resident set (``os.wait4``), in
MiB, imports included.

How the ratio is computed. Seconds per row of a one-off stage are its *marginal* cost, (seconds at N - seconds at the
base) / (N - base rows), so the fixed start-up (model build, label tables, ``datasets`` set-up) cancels out; the rows
are those the stage reads (``benchmark``: its split's). A marginal time under max(0.02 s, half the base's time) is not
told apart from noise (marked ``~``): the fixed cost would dominate it. Per-request stages report the median request.
A stage's ratio is its seconds per row (or per request) at the largest size over that at the smallest size whose
marginal time is resolved (the line says when that is not the smallest); when no smaller size's is, the ratio printed
is a lower bound, and when even the largest's is not, there is none (the stage costs next to nothing at every size).
The last line is the worst ratio over the stages (target: at most 1.5); the line before compares the benchmark's peak
memory at the largest size with its decoded images' own size (target: at most 2 GB more). The base and every size but
the largest run ``--repeats`` times, the largest ``--repeats-largest`` times (fastest kept; peak: the highest).

    python benchmarks/scale.py                                    # 1K, 10K, 100K; folders kept under --work
    python benchmarks/scale.py --sizes 1000,10000 --stages browse,review
    python benchmarks/scale.py --fresh --work /tmp/d3s-scale      # rebuild the folders
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's d3s, not an installed one

BACKGROUNDS = 10
PER_PAIR = 10
SIZE = 16  # image side of the stored images (and of the folder's `--size`)
BENCH_MODEL, BENCH_SIDE = "test_resnet", 160  # timm's test_resnet reads 160 px
CALLS = 20  # requests timed per app stage
IN_PROCESS_RUNS = 5  # runs of `generate --dry-run` and of the resume in their process (they change nothing): fastest kept
STAGES = ("dry-run", "resume", "score", "split", "benchmark", "browse-open", "browse", "review-open", "review")
PER_REQUEST = {"browse", "review"}
# what each CLI stage imports anyway; imported before the timer starts, so imports do not blur the marginal cost
PRELOAD = {
    "dry-run": ["numpy", "timm.data", "d3s.cli", "d3s.generate", "d3s.labels"],
    "resume": ["numpy", "pyarrow.parquet", "datasets", "timm.data", "d3s.cli", "d3s.generate", "d3s.labels"],
    "score": ["numpy", "pyarrow.parquet", "datasets", "torch", "timm", "open_clip", "d3s.cli", "d3s.curate", "d3s.classifiers"],
    "split": ["numpy", "pyarrow.parquet", "datasets", "d3s.cli", "d3s.curate"],
    "benchmark": ["numpy", "pyarrow.parquet", "datasets", "torch", "timm", "open_clip", "d3s.cli", "d3s.benchmark",
                  "d3s.classifiers", "d3s.plots", "matplotlib.pyplot"],
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1",
       "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1"}


# --- the folders ---------------------------------------------------------------------------------------------------

def classes_for(rows: int) -> int:
    if rows % (BACKGROUNDS * PER_PAIR) or not 1 <= rows // (BACKGROUNDS * PER_PAIR) <= 1000:
        raise SystemExit(f"scale: error: sizes must be multiples of {BACKGROUNDS * PER_PAIR} from 100 to 100000, got {rows}")
    return rows // (BACKGROUNDS * PER_PAIR)


def generate_args(rows: int) -> list[str]:
    """The `d3s generate` arguments of a folder of ``rows`` rows (without --out)."""
    return ["--foregrounds", f"0-{classes_for(rows) - 1}", "--backgrounds", "all", "--per-pair", str(PER_PAIR),
            "--model", "tiny", "--size", str(SIZE), "--steps", "2", "--strength", "0.5"]


def png_pool(n: int, seed: int) -> list[dict]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        base = rng.integers(40, 216, 3)
        pixels = np.clip(base + rng.normal(0, 24, (SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        out.append({"bytes": buf.getvalue(), "path": None})
    return out


def build_folder(folder: Path, rows: int) -> None:
    """The finished folder of `d3s generate GENERATE_ARGS --out FOLDER`, written as its run writes it, without diffusion."""
    import numpy as np

    from d3s.cli import build_parser
    from d3s.dataset import write_card, write_shard
    from d3s.generate import (GenerationConfig, PreparedBatch, create_output, dataset_card_body, features, make_plan,
                              make_rows)
    from d3s.guides import choose

    args = build_parser().parse_args(["generate", *generate_args(rows), "--out", str(folder)])
    c = GenerationConfig(foregrounds=args.foregrounds, backgrounds=args.backgrounds, out=args.out, per_pair=args.per_pair,
                         model=args.model, size=args.size, steps=args.steps, strength=args.strength)
    plan, photos, templates = make_plan(c)
    assert len(plan.items) == rows, (len(plan.items), rows)
    create_output(plan)
    feats = features(plan)
    images, guides = png_pool(97, 0), png_pool(31, 1)
    per_shard = max(c.shard_size, c.batch_size)
    for start in range(0, rows, per_shard):
        items = plan.items[start : start + per_shard]
        choices = [choose(np.random.default_rng(i.seed), photos.refs(plan.classes[i.fg]), templates.refs(plan.recipe.shifts[i.bg]),
                          c.size, c.fg_scale) for i in items]
        prompts = [plan.recipe.prompt_for(plan.classes[i.fg], plan.recipe.shifts[i.bg]) for i in items]
        prepared = PreparedBatch(items, choices, [guides[i.item_id % len(guides)] for i in items], prompts)
        write_shard(c.out, c.split, make_rows(plan, prepared, [images[i.item_id % len(images)] for i in items],
                                              [None] * len(items)), feats)
    write_card(c.out, feats, dataset_card_body(plan, done_count=rows))


def ensure_folder(work: Path, rows: int, fresh: bool) -> Path:
    folder = work / f"rows-{rows}" / "generated"
    done = folder.parent / "BUILT"
    if fresh or not done.exists():
        shutil.rmtree(folder.parent, ignore_errors=True)
        folder.parent.mkdir(parents=True)
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, "_build", str(folder), str(rows)], env=ENV, check=True)
        done.write_text(f"{time.perf_counter() - t:.1f}\n")
    return folder


# --- one stage in a child process ----------------------------------------------------------------------------------

def run_child(argv: list[str], log: Path) -> tuple[dict, float]:
    """A child `scale.py _KIND ...`: its JSON report and its own peak resident set in MiB."""
    fd, report = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, __file__, *argv[:1], report, *argv[1:]], env=ENV, cwd=REPO, stdout=f,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    try:
        if proc.returncode != 0:
            raise SystemExit(f"scale: error: {' '.join(argv[:3])} failed ({proc.returncode}); see {log}")
        return json.loads(Path(report).read_text()), usage.ru_maxrss / 1024
    finally:
        os.unlink(report)


class Clock:
    """Wall and CPU seconds (user + system, every thread of this process) of a block."""

    def __enter__(self) -> "Clock":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def times(self) -> list[float]:
        return [self.wall, self.cpu]


def child_cli(report: str, stage: str, times: str, *argv: str) -> None:
    import importlib

    for name in PRELOAD[stage]:
        importlib.import_module(name)
    from d3s.cli import main

    runs = []
    for _ in range(int(times)):  # a command that changes nothing (dry run, resume of a finished folder) can run again
        with Clock() as clock:
            code = main(list(argv))
        if code:
            raise SystemExit(code)
        runs.append(clock.times())
    Path(report).write_text(json.dumps({"wall": min(r[0] for r in runs), "cpu": min(r[1] for r in runs)}))


def child_browse(report: str, folder: str, cache: str) -> None:
    import timm.data  # noqa: F401 (the class names' source, imported anyway)

    from d3s.handlers import ALL, Settings, make_browse_fn
    from d3s.hosting import Catalog

    browse = make_browse_fn(Settings(catalog=Catalog(datasets={"scale": folder}), cache_dir=cache))
    with Clock() as opened:
        first = browse("scale", None, ALL, ALL)
    classes, backgrounds = first[3]["choices"][1:], first[4]["choices"][1:]
    calls = []
    for k in range(CALLS):
        fg, bg = classes[(7 * k) % len(classes)], backgrounds[k % len(backgrounds)]
        fg, bg = [(fg, ALL), (ALL, bg), (fg, bg)][k % 3]
        with Clock() as clock:
            items = browse("scale", None, fg, bg)[0]
        calls.append(clock.times())
        assert items, (fg, bg)
    Path(report).write_text(json.dumps({"open": opened.times(), "calls": calls}))


def child_review(report: str, folder: str, cache: str, store_path: str, answered: str) -> None:
    import timm.data  # noqa: F401 (the class names' source, imported anyway)

    from d3s.handlers import Settings, make_review_fns
    from d3s.hosting import Catalog
    from d3s.review import ReviewStore, dataset_key

    store = ReviewStore(store_path)  # the first half of the items answered by the reviewer (not timed)
    key = dataset_key(folder)
    with sqlite3.connect(store_path) as db:
        now = time.time()
        db.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?, ?)",
                       ((key, i, "alice", 1, 0, now) for i in range(int(answered))))
    del store
    show, present, _, _ = make_review_fns(Settings(catalog=Catalog(datasets={"scale": folder}), reviews=store_path,
                                                   cache_dir=cache))
    with Clock() as opened:
        card = show("scale", "alice")
    assert card[3][2] == int(answered), card[2]  # the first item not answered yet
    calls = []
    for _ in range(CALLS):
        with Clock() as clock:
            card = present("alice", card[3], False)
        calls.append(clock.times())
    assert card[3][2] == int(answered) + CALLS and f"{int(answered) + CALLS} of" in card[2], card[2]
    Path(report).write_text(json.dumps({"open": opened.times(), "calls": calls}))


# --- the stages ----------------------------------------------------------------------------------------------------

def measure(stage: str, folder: Path, rows: int, log: Path) -> dict:
    """One run of ``stage`` on the folder of ``rows`` rows: {rows, wall, cpu, peak} (per-request stages: the median
    request and the peak of the process that served them)."""
    work = folder.parent
    if stage in ("dry-run", "resume"):
        argv = ["generate", *generate_args(rows), *(["--dry-run"] if stage == "dry-run" else ["--out", str(folder)])]
        out, peak = run_child(["_cli", stage, str(IN_PROCESS_RUNS), *argv], log)
        if stage == "resume" and "(0 generated now" not in log.read_text().rsplit("\n$ ", 1)[-1]:
            raise SystemExit(f"scale: error: the resume over {folder} found work to do; see {log}")
        return {"rows": rows, **out, "peak": peak}
    if stage == "score":
        out, peak = run_child(["_cli", stage, "1", "score", "--data", str(folder), "--clip", "clip:tiny", "--no-pretrained",
                               "--batch-size", "64"], log)
        return {"rows": rows, **out, "peak": peak}
    if stage == "split":
        shutil.rmtree(work / "split", ignore_errors=True)
        out, peak = run_child(["_cli", stage, "1", "split", "--data", str(folder), "--out", str(work / "split"),
                               "--max-rank", "1000"], log)
        return {"rows": rows, **out, "peak": peak}
    if stage == "benchmark":
        if not (work / "split").is_dir():
            measure("split", folder, rows, log)
        shutil.rmtree(work / "results", ignore_errors=True)
        out, peak = run_child(["_cli", stage, "1", "benchmark", "--data", str(work / "split"), "--models", BENCH_MODEL,
                               "--no-pretrained", "--batch-size", "32", "--workers", "1", "--quiet",
                               "--out", str(work / "results")], log)
        n = json.loads((work / "results" / "summary.json").read_text())["models"][0]["d3s_n"]
        return {"rows": n, **out, "peak": peak, "decoded_mb": n * 3 * BENCH_SIDE ** 2 / 2**20}
    cache = work / "app-cache"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        if stage in ("browse-open", "browse"):
            out, peak = run_child(["_browse", str(folder), str(cache)], log)
        else:
            store = work / "reviews.sqlite"
            for p in work.glob("reviews.sqlite*"):
                p.unlink()
            out, peak = run_child(["_review", str(folder), str(cache), str(store), str(rows // 2)], log)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if stage.endswith("-open"):
        return {"rows": rows, "wall": out["open"][0], "cpu": out["open"][1], "peak": peak}
    return {"rows": rows, "wall": statistics.median(c[0] for c in out["calls"]),
            "cpu": statistics.median(c[1] for c in out["calls"]), "peak": peak}


def best_of(stage: str, folder: Path, rows: int, log: Path, repeats: int) -> dict:
    runs = [measure(stage, folder, rows, log) for _ in range(repeats)]
    return {**runs[0], "wall": min(r["wall"] for r in runs), "cpu": min(r["cpu"] for r in runs),
            "peak": max(r["peak"] for r in runs)}


RESOLUTION_S = 0.02  # a marginal CPU time under this, or under half the base's (its fixed cost), is not told from noise


def _resolution(base: dict) -> float:
    return max(RESOLUTION_S, 0.5 * base["cpu"])


def per_row(stage: str, m: dict, base: dict | None) -> tuple[float, bool]:
    """CPU seconds per row (marginal over the base) or per request, and whether it is resolved from the noise."""
    if stage in PER_REQUEST:
        return m["cpu"], True
    marginal = m["cpu"] - base["cpu"]
    return marginal / max(1, m["rows"] - base["rows"]), marginal >= _resolution(base)


def ratio(stage: str, by_size: dict[int, tuple[dict, float, bool]], base: dict | None) -> tuple[float | None, str]:
    """Per-row time at the largest size over that at the smallest size whose marginal time is resolved; a lower bound
    when none below the largest is; None when even the largest's marginal time is below noise (flat by any account)."""
    sizes = sorted(by_size)
    large, unit, ok = by_size[sizes[-1]]
    if not ok:
        return None, "marginal time below noise at every size"
    for n in sizes[:-1]:
        m, small, small_ok = by_size[n]
        if small_ok:
            return unit / small, "" if n == sizes[0] else f"vs {n} rows: smaller sizes' marginal times are below noise"
    m = by_size[sizes[-2]][0]
    floor = _resolution(base) / max(1, m["rows"] - base["rows"])
    return unit / floor, f"a lower bound: every smaller size's marginal time is below {floor * (m['rows'] - base['rows']):.2f} s"


def line(stage: str, m: dict, unit: float | None, ok: bool = True) -> str:
    text = f"{stage:<12} {m['rows']:>7} rows {m['wall']:8.3f} s {m['cpu']:8.3f} s cpu"
    if unit is None:
        text += f" {'(base: fixed cost)':>22}"
    elif stage in PER_REQUEST:
        text += f" {unit * 1e3:10.2f} ms/request"
    else:
        text += f" {unit * 1e6:10.2f} us/row{' ' if ok else '~'}   "
    text += f"  peak {m['peak']:7.0f} MB"
    if "decoded_mb" in m:
        text += f" (decoded images {m['decoded_mb']:.0f} MB)"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,100000", help="rows per folder, multiples of 100 (default: %(default)s)")
    ap.add_argument("--base", type=int, default=100, help="rows of the folder whose time is the fixed cost (default: %(default)s)")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)} (default: all)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the base and every size but the largest; fastest kept "
                                                           "(default: %(default)s)")
    ap.add_argument("--repeats-largest", type=int, default=2, help="runs of the largest size (default: %(default)s)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "d3s-scale"),
                    help="where the folders are built and kept between runs (default: %(default)s)")
    ap.add_argument("--fresh", action="store_true", help="rebuild the folders")
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not sizes or args.base >= sizes[0] or min(args.repeats, args.repeats_largest) < 1:
        ap.error(f"unknown stage(s) {', '.join(unknown)}" if unknown else "--repeats and --repeats-largest must be at least 1"
                 if min(args.repeats, args.repeats_largest) < 1 else "--base must be below the smallest size")
    for n in [args.base, *sizes]:
        classes_for(n)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    log = work / "scale.log"
    log.write_text("")
    folders = {n: ensure_folder(work, n, args.fresh) for n in [args.base, *sizes]}
    print(f"folders under {work} ({', '.join(str(n) for n in sizes)} rows, base {args.base}); child output in {log}", flush=True)
    results: dict[str, dict[int, tuple[dict, float, bool]]] = {}
    bases: dict[str, dict | None] = {}
    for stage in STAGES:
        if stage not in stages:
            continue
        base = None
        if stage not in PER_REQUEST:
            base = best_of(stage, folders[args.base], args.base, log, args.repeats)
            print(line(stage, base, None), flush=True)
        results[stage], bases[stage] = {}, base
        for n in sizes:
            m = best_of(stage, folders[n], n, log, args.repeats if n < sizes[-1] else args.repeats_largest)
            unit, ok = per_row(stage, m, base)
            results[stage][n] = (m, unit, ok)
            print(line(stage, m, unit, ok), flush=True)
    print(f"(~: the marginal CPU time is below noise, under max({RESOLUTION_S} s, half the base's CPU time))")
    ratios = {}
    for stage, by_size in results.items():
        if len(by_size) > 1:
            value, note = ratio(stage, by_size, bases[stage])
            print(f"ratio {stage:<12} " + ("-" if value is None else f"{value:.2f}") + (f"  ({note})" if note else ""))
            if value is not None:
                ratios[stage] = value
    if "benchmark" in results and sizes[-1] in results["benchmark"]:
        m = results["benchmark"][sizes[-1]][0]
        print(f"benchmark at {sizes[-1]} rows: peak {m['peak']:.0f} MB = decoded images {m['decoded_mb']:.0f} MB "
              f"+ {m['peak'] - m['decoded_mb']:.0f} MB (target: at most 2048 MB over)")
    if ratios:
        worst = max(ratios, key=ratios.get)
        print(f"worst ratio {ratios[worst]:.2f} ({worst}; largest / smallest size, per row or per request; target <= 1.5)")
    return 0


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else ""
    if kind == "_build":
        build_folder(Path(sys.argv[2]), int(sys.argv[3]))
    elif kind == "_cli":
        child_cli(*sys.argv[2:])
    elif kind == "_browse":
        child_browse(*sys.argv[2:])
    elif kind == "_review":
        child_review(*sys.argv[2:])
    else:
        sys.exit(main())
