"""Score the disentanglement defaults on a fixed family of features toys (issue 17): one row per regime.

A single toy cannot tell whether the defaults work: on held-out paper-scale features whose background was much
more strongly encoded, with 20 train rows per fg class, the defaults left bg in z_fg (linear bg_from_fg at 0.95 of
the ablation's excess) while another held-out set met every target. So this script scores them on :data:`GRID`,
toys of ``d3s toy --kind features`` that move the regime one knob at a time (bg strength, rows per class, how fg and
bg are mixed, nuisance). For each setting it

1. writes the toy (``d3s toy --kind features``, the seed in the setting) and reads bg from its raw first
   1798/2048 features with a linear probe (``raw bg``: how strongly the background is encoded);
2. trains the ablation (``--critic-weight 0 --no-erase``: the same training without critics nor erasers) and each
   method of ``--methods`` (default: just the defaults, ``wasserstein+erase``: ``d3s train`` with no flags erases)
   with ``d3s train --data TOY --out RUN`` (subprocesses with one thread each, ``--jobs`` side by side; an erasing
   method whose un-erased twin is in the grid too erases a copy of the twin's run with ``d3s erase --out``);
3. probes each run with ``d3s probe --probe both``;

and prints one row per setting and method: linear and MLP ff, bb, fb, bf (fg_from_fg, bg_from_bg, fg_from_bg,
bg_from_fg: validation top-1), each cross probe's excess over chance as a fraction of the ablation's, and PASS/FAIL
for each target below; the last line names the worst row (most targets failed; ties: the larger linear cross
fraction). ``--out`` gets ``grid.json`` (everything, with the commands) and ``grid.md`` (the table).

Targets (per row, against the ablation on the same toy):

- ``ff``: linear fg_from_fg within 0.05 of the ablation's;
- ``bb``: linear bg_from_bg >= 0.90;
- ``lin``: each linear cross probe's excess over chance at most half the ablation's; at most 0.02 over chance for the
  probe of a part whose LEACE eraser is complete (``--erase``: its rank in ``erasure.json`` reaches k - 1 for k
  classes, or the part's width). LEACE equalises the k class means along at most k - 1 directions; where they
  outnumber the part's features (1000 fg classes, 250 z_bg features) equal means would leave the part constant, so
  the package erases only the directions above its tolerance (92 of 250 on ``strong-bg-2pp``) and that probe is held
  to the critics' target: the guarantee does not exist there, and the row says which parts had it;
- ``mlp``: the MLP probes' mean cross excess at most 0.75 of the ablation's.

Resumable: a run folder whose ``probe.json`` exists is not redone, a trained one (``done.json``) is only probed, and an
interrupted ``d3s train`` continues from its checkpoint. Run folders are ``RUNS/<setting>/<method>-<steps>`` so another
``--steps`` never mixes with earlier runs.

Budget: the whole grid at the paper's sizes must finish in under 2 hours on 2 cores with ``--jobs 2``. Measured on this
project's 2-core machine, one thread per process: one default run (toy 2048-d, 1000 fg x 10 bg, 1 row per pair;
``d3s train`` with the defaults, 2000 steps; ``d3s probe --probe both``), alone but beside other developers' jobs
(load 4-5): toy 4 s, train 1003 s (482 s of CPU), probe 355 s (about 275 s of CPU): 1362 s. Two trainings side by
side (the grid's two jobs): 0.33 s per step each. So a run takes about 0.33 s x steps + 25 s (start, head
evaluation) + 355 s (probes; about twice that with 2 rows per pair), and the grid (9 settings x 2 runs) at 2000 steps
about (18 x 1040 s + 2 x 355 s) / 2 = 2 h 42 min: too long. ``DEFAULT_STEPS`` is therefore 1000: (18 x 710 s + 2 x
355 s) / 2 + 2 min of toys = about 1 h 55 min (longest runs first, so the two jobs end together) on a machine
running nothing else; other work on the same cores stretches it (the single run above took twice its CPU time).
Measured end to end: ``time python benchmarks/disentangle_grid.py --out out/grid-fresh`` (the defaults and the ablation,
9 settings, nothing else on the machine) took 73 min 20 s (134 min of user CPU), and its table was the earlier runs' to
the last digit (same seeds, one thread each). With weight decay 1e-4 (the default since), from scratch in two
invocations (four rows, then five): 33 + 43 = 76 min.

What 1000 steps changes: the same defaults (200 warm-up steps, then the critic weight ramps up over 500) run for half
as long: 300 steps at the full critic weight instead of 1300, and the model's cosine learning-rate decay twice as
fast. The issue's failure was measured at 2000 steps; a row may pass at 1000 and fail at 2000 (or the other way
round), so rerun the rows in question with ``--steps 2000`` (about 20 minutes a row with 2 jobs; run folders are
per step count, so both are kept).

::

    python benchmarks/disentangle_grid.py --out out/grid                         # the whole grid, paper sizes
    python benchmarks/disentangle_grid.py --out out/grid --rows default,strong-bg-2pp --methods wasserstein,wasserstein+erase
    python benchmarks/disentangle_grid.py --out out/grid-quick --quick --steps 20   # tiny sizes: a smoke test
    # a candidate that changes what the ablation shares: every run, the ablation too, with the flags (runs METHOD@wd)
    python benchmarks/disentangle_grid.py --out out/grid --common "wd=--hparams '{\\"weight_decay\\": 0.001}'"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's d3s, not an installed one


@dataclass(frozen=True)
class Setting:
    """One regime of the grid: a features toy.

    Args:
        name (`str`): row name (``--rows`` picks by it; the toy's and the runs' folder name).
        what (`str`): what the regime is, in words.
        toy (`dict`): ``FeatureToyConfig`` settings other than the defaults (``d3s toy --kind features`` flags).
        seed (`int`, defaults to 1): the toy's seed (1 unless said: not the seed-0 toy the defaults were diagnosed on).
    """

    name: str
    what: str
    toy: dict = field(default_factory=dict)
    seed: int = 1


# FIXED before any tuning of the method on it (issue 17): the rows, their knobs and seeds are the benchmark. The knob
# values were set once from the raw features alone (linear probes on the toy, no training): `strong-bg` reads bg at
# 1.00 from the raw first 1798 features (as the held-out set), `weak-bg` at 0.94-0.96 (seeds 0 and 1; the
# default 0.98-0.99; still above the 0.90 target for z_bg), and each mixing and the nuisance regime leave fg readable
# from the raw features by a linear read-out at 0.69-0.98 (seed 0; the default: 0.90). To score anything else, add a
# row with a new name; never edit a row.
GRID: tuple[Setting, ...] = (
    Setting("default", "today's default toy (the README's features toy: relu2, bg scale 1, 1 row per pair), seed 0", {}, seed=0),
    Setting("strong-bg-2pp", "the issue's regime: bg strongly encoded (bg scale 2.5: raw linear bg 1.00) and 2 rows per pair "
                             "(20 per fg class, memorised)", {"bg_scale": 2.5, "train_per_pair": 2}),
    Setting("strong-bg-1pp", "the same bg strength with 1 row per pair (10 per fg class)", {"bg_scale": 2.5}),
    Setting("relu1", "one ReLU layer: each feature a rectified sum of the codes", {"mixing": "relu1"}),
    Setting("gated", "bg gates fg: each hidden unit's fg input scaled by a bg-set factor in (0, 2)", {"mixing": "gated"}),
    Setting("rotate", "the fg code turned by bg-dependent angles (up to 45 degrees per plane)", {"mixing": "rotate"}),
    Setting("product", "every hidden unit (fg proj. + 1) x (bg proj. + 1): fg, bg and their product", {"mixing": "product"}),
    Setting("strong-nuisance", "64 nuisance dimensions at scale 1.25 (default: 32 at 1)", {"nuisance": 64, "nuisance_scale": 1.25}),
    Setting("weak-bg", "bg weakly encoded (bg scale 0.8: raw linear bg 0.94-0.96)", {"bg_scale": 0.8}),
)

# --methods NAME: the `d3s train` flags beside the toy's (the defaults are no flags). `--method adversarial` and
# `--erase` come from other work on `d3s train`; a name whose flags this checkout's `d3s train` lacks fails at its
# first run, with the train log's last lines.
# `d3s train` erases by default (LEACE after the last step, both parts) for wasserstein and adversarial: "+erase" is
# that default, spelled out; the names without it are the same training with --no-erase. Both parts: on
# `strong-bg-2pp` erasing fg from z_bg too took linear fg_from_bg from 0.286 to 0.039 with bg_from_bg still 1.00.
METHODS: dict[str, tuple[str, ...]] = {
    "wasserstein": ("--no-erase",),
    "adversarial": ("--method", "adversarial", "--no-erase"),
    "wasserstein+erase": ("--erase",),
    "adversarial+erase": ("--method", "adversarial", "--erase"),
}
DEFAULTS = "wasserstein+erase"  # what `d3s train` does with no flags
ABLATION = ("ablation", ("--critic-weight", "0", "--no-erase"))  # the defaults without critics nor erasers: the reference

PAPER = {"fg_classes": 1000, "bg_classes": 10, "dim": 2048}
QUICK = {"fg_classes": 50, "bg_classes": 10, "dim": 256}
DEFAULT_STEPS = 1000  # the defaults' own `d3s train --iters` is 2000; the grid at 2000 does not fit in 2 hours (docstring)
QUICK_STEPS = 60

FF_WITHIN, BB_MIN, LIN_FRACTION, ERASE_EXCESS, MLP_FRACTION = 0.05, 0.90, 0.5, 0.02, 0.75
PROBES = (("ff", "fg_from_fg"), ("bb", "bg_from_bg"), ("fb", "fg_from_bg"), ("bf", "bg_from_fg"))
CRITERIA = ("ff", "bb", "lin", "mlp")


class GridError(ValueError):
    """Bad options, or an output folder holding another grid's toy."""


def thread_env() -> dict[str, str]:
    """The environment of every subprocess: one thread each, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _top_level_split(spec: str) -> list[str]:
    """``spec`` cut at the commas outside quotes and braces."""
    parts, start, depth, quote = [], 0, 0, ""
    for i, ch in enumerate(spec):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
    return [*parts, spec[start:]]


def parse_methods(spec: str) -> dict[str, tuple[str, ...]]:
    """``--methods``: a comma list of names of :data:`METHODS`, or ``NAME=FLAGS`` (extra `d3s train` flags, split as
    a shell would; a comma inside quotes or braces belongs to the flags: ``wd=--hparams '{"a": 1, "b": 2}'``)."""
    methods: dict[str, tuple[str, ...]] = {}
    for entry in (e.strip() for e in _top_level_split(spec)):
        if not entry:
            continue
        name, eq, flags = entry.partition("=")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._-]*", name) or name == ABLATION[0]:
            raise GridError(f"--methods: {name!r} is not a usable method name (letters, digits, + . _ -; not 'ablation').")
        if eq:
            methods[name] = tuple(shlex.split(flags))
        elif name in METHODS:
            methods[name] = METHODS[name]
        else:
            raise GridError(f"--methods: unknown method {name!r}; choose from {', '.join(METHODS)}, or give NAME=FLAGS "
                            "(e.g. 'cw5=--critic-weight 5').")
    if not methods:
        raise GridError("--methods names no method.")
    return methods


def parse_common(spec: str | None) -> tuple[str, tuple[str, ...]]:
    """``--common NAME=FLAGS``: `d3s train` flags given to every run of the sweep, the ablation included, so a
    candidate that changes something the ablation shares (weight decay, label smoothing) is scored against an ablation
    with the same change. Returns ``("@NAME", flags)``, the suffix of every run's name and folder (``ablation@NAME``):
    such runs never mix with those of the plain sweep; ``("", ())`` without it."""
    if not spec:
        return "", ()
    name, eq, flags = spec.partition("=")
    name = name.strip()
    if not eq or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._-]*", name) or not flags.strip():
        raise GridError(f"--common: give NAME=FLAGS (e.g. wd=--hparams '{{\"weight_decay\": 0.0001}}'), got {spec!r}.")
    return f"@{name}", tuple(shlex.split(flags))


def with_common(flags: tuple[str, ...], common: tuple[str, ...]) -> tuple[str, ...]:
    """A run's flags followed by the sweep's common ones; two ``--hparams`` become one (`d3s train` would keep only the
    last), and a key both set differently is refused."""
    if "--hparams" not in flags or "--hparams" not in common:
        return (*flags, *common)
    (own, rest), (shared, common_rest) = _split_hparams(flags), _split_hparams(common)
    clash = sorted(k for k in own.keys() & shared.keys() if own[k] != shared[k])
    if clash:
        raise GridError(f"--common and a method both set {', '.join(clash)} in --hparams; set it in one of them.")
    return (*rest, *common_rest, "--hparams", json.dumps({**shared, **own}))


def sweep(methods_spec: str, common_spec: str | None) -> tuple[tuple[str, tuple[str, ...]], dict[str, tuple[str, ...]], tuple[str, ...]]:
    """The runs of a sweep from ``--methods`` and ``--common``: the ablation ``(name, flags)``, the methods
    ``{name: flags}`` (names suffixed ``@NAME`` and flags extended by ``--common``'s), and the common flags."""
    tag, common = parse_common(common_spec)
    methods = {m + tag: with_common(f, common) for m, f in parse_methods(methods_spec).items()}
    return (ABLATION[0] + tag, with_common(ABLATION[1], common)), methods, common


def _split_hparams(flags: tuple[str, ...]) -> tuple[dict, tuple[str, ...]]:
    """The JSON object of ``--hparams`` in ``flags``, and the flags without it."""
    i = flags.index("--hparams")
    text = flags[i + 1] if i + 1 < len(flags) else ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise GridError(f"--hparams wants a JSON object, got {text!r}.")
    return value, (*flags[:i], *flags[i + 2:])


def pick_rows(spec: str | None) -> list[Setting]:
    """``--rows``: the settings of :data:`GRID` named in a comma list (all without it), in the grid's order."""
    return pick_named(spec, GRID, "--rows")


def pick_named(spec: str | None, items: tuple, option: str) -> list:
    """The ``items`` (each with a ``name``) named in the comma list ``spec`` of ``option``, in their order; all of them
    without it."""
    if not spec:
        return list(items)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in {s.name for s in items}]
    if unknown or not names:
        raise GridError(f"{option}: unknown {', '.join(unknown) or 'nothing'}; choose from {', '.join(s.name for s in items)}.")
    return [s for s in items if s.name in names]


def complete_erasers(run: Path) -> frozenset[str]:
    """The parts of a run whose LEACE eraser is complete (``erasure.json``): rank k - 1 for k classes, or the part's
    width; a linear probe of the erased concept is held to the erasure's target there, to the critics' elsewhere."""
    path = run / "erasure.json"
    if not path.exists():
        return frozenset()
    report = json.loads(path.read_text())
    classes = {"fg": report.get("fg_classes"), "bg": report.get("bg_classes")}
    done = set()
    for part in ("z_fg", "z_bg"):
        e = report.get(part) or {}
        k = classes.get(e.get("erases"))
        if e.get("erases") and k and e.get("rank", 0) >= min(k - 1, e["dim"]):
            done.add(part)
    return frozenset(done)


def erases(name: str, flags: tuple[str, ...]) -> frozenset[str]:
    """The parts a method may erase (LEACE): ``--erase-parts`` of its flags (``auto`` by default: both, less one that
    would cost its own head), none without ``--erase``."""
    if "--erase" not in flags and "erase" not in name:
        return frozenset()
    parts = flags[flags.index("--erase-parts") + 1] if "--erase-parts" in flags else "auto"
    return frozenset(("z_fg", "z_bg") if parts in ("both", "auto") else (parts,))


# --- the toys ----------------------------------------------------------------------------------------------

def toy_config(setting: Setting, quick: bool, out: Path):
    from d3s.toy import FeatureToyConfig

    return FeatureToyConfig(out=str(out), **(QUICK if quick else PAPER), **setting.toy, seed=setting.seed)


def toy_command(cfg) -> list[str]:
    """``d3s toy --kind features`` with every knob of ``cfg`` spelled out."""
    from d3s.toy import FeatureToyConfig

    flags = {"fg_classes", "bg_classes", "dim", "train_per_pair", "val_per_pair", "mixing", "bg_scale", "fg_noise", "bg_noise",
             "nuisance", "nuisance_scale", "noise_dims", "seed"}
    default = asdict(FeatureToyConfig(out=""))
    hidden = [k for k, v in asdict(cfg).items() if k not in flags | {"out"} and v != default[k]]
    if hidden:
        raise GridError(f"a grid toy may only set what `d3s toy` takes; {', '.join(hidden)} is not a flag.")
    cmd = [sys.executable, "-m", "d3s", "toy", "--kind", "features", "--out", cfg.out]
    for k in sorted(flags):
        cmd += [f"--{k.replace('_', '-')}", str(getattr(cfg, k))]
    return cmd


def ensure_toy(setting: Setting, quick: bool, root: Path) -> dict:
    """Write the setting's toy (unless the folder already holds exactly it) and its raw linear bg probe."""
    import torch

    from d3s.data import FeatureTable, load_split
    from d3s.probes import fit_probe

    out = root / setting.name
    cfg = toy_config(setting, quick, out)
    want = {"kind": "features", **{k: v for k, v in asdict(cfg).items() if k != "out"}}
    meta = out / "d3s_toy.json"
    cmd = toy_command(cfg)
    if meta.exists():
        have = {k: v for k, v in json.loads(meta.read_text()).items() if k != "out"}
        if have != want:
            diff = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise GridError(f"{out} holds another toy ({', '.join(diff)} differ); give another --out.")
    else:
        if out.exists():
            shutil.rmtree(out)  # a toy folder without its d3s_toy.json is an interrupted write of ours
        proc = subprocess.run(cmd, cwd=REPO, env=thread_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise GridError(f"d3s toy for {setting.name} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    raw_file = out / "raw_probe.json"
    if not raw_file.exists():
        torch.set_num_threads(1)
        tr, va = FeatureTable(load_split(str(out), "train")), FeatureTable(load_split(str(out), "validation"))
        k = cfg.dim * 1798 // 2048  # the paper's z_fg share: the "raw first 1798 dims"
        probe = fit_probe(tr.x[:, :k], tr.bg)
        raw = {"bg_first": round(probe.accuracy(va.x[:, :k], va.bg), 4), "first_dims": k}
        raw_file.write_text(json.dumps(raw, indent=2) + "\n")
    return {"name": setting.name, "what": setting.what, "toy": want, "folder": str(out), "command": shlex.join(cmd[2:]),
            "raw": json.loads(raw_file.read_text())}


# --- the runs ----------------------------------------------------------------------------------------------

def run_folder(runs: Path, setting: str, method: str, steps: int) -> Path:
    return runs / setting / f"{method}-{steps}"


def run_commands(toy: Path, run: Path, steps: int, flags: tuple[str, ...]) -> tuple[list[str], list[str]]:
    train = [sys.executable, "-m", "d3s", "train", "--data", str(toy), "--out", str(run), "--iters", str(steps),
             "--no-progress", "--erase-probe", "none", *flags]  # the grid probes every run itself, below
    probe = [sys.executable, "-m", "d3s", "probe", "--data", str(toy), "--checkpoint", str(run), "--probe", "both",
             "--out", str(run / "probe.json")]
    return train, probe


def do_run(toy: Path, run: Path, steps: int, flags: tuple[str, ...]) -> dict:
    """Train (unless done) and probe (unless probed) one run; returns the seconds spent and an error, if any."""
    run.mkdir(parents=True, exist_ok=True)
    train, probe = run_commands(toy, run, steps, flags)
    spent = {"train_s": 0.0, "probe_s": 0.0}
    for what, cmd, done in (("train", train, run / "done.json"), ("probe", probe, run / "probe.json")):
        if done.exists():
            continue
        t = time.time()
        with open(run / f"{what}.log", "a") as log:
            log.write(f"$ {shlex.join(cmd[2:])}\n")
            log.flush()
            code = subprocess.run(cmd, cwd=REPO, env=thread_env(), stdout=log, stderr=subprocess.STDOUT).returncode
        spent[f"{what}_s"] = round(time.time() - t, 1)
        if code != 0 or not done.exists():
            tail = (run / f"{what}.log").read_text().strip().splitlines()[-3:]
            return {**spent, "error": f"d3s {what} failed ({code}): {' | '.join(tail)}"}
    return spent


def erase_base(flags: tuple[str, ...], methods: dict[str, tuple[str, ...]]) -> str | None:
    """The method whose trained run an ``--erase`` method can copy and erase (the same flags without the erasure's),
    so the grid erases that checkpoint (``d3s erase --out``) instead of training again: the same result, at the cost of
    the fit and the probes."""
    if "--erase" not in flags:
        return None
    rest = _without_erasure(flags)
    return next((m for m, f in methods.items() if "--erase" not in f and _without_erasure(f) == rest), None)


def _without_erasure(flags: tuple[str, ...]) -> tuple[str, ...]:
    """``flags`` without ``--erase``, ``--no-erase`` and ``--erase-parts PARTS``: what the training itself depends on."""
    return tuple(f for i, f in enumerate(flags)
                 if f not in ("--erase", "--no-erase", "--erase-parts") and (i == 0 or flags[i - 1] != "--erase-parts"))


def do_erase_copy(toy: Path, base: Path, run: Path, flags: tuple[str, ...]) -> dict:
    """``d3s erase --checkpoint BASE --out RUN`` (with the method's parts), then ``d3s probe --probe both`` on it."""
    if (run / "probe.json").exists():
        return {"erase_s": 0.0}
    if not (base / "done.json").exists():
        return {"error": f"{base} is not trained; cannot erase a copy of it"}
    parts = flags[flags.index("--erase-parts") + 1] if "--erase-parts" in flags else "auto"  # `d3s train --erase`'s default
    if run.exists():
        shutil.rmtree(run)  # a copy interrupted mid-way: `d3s erase --out` wants a new folder
    run.parent.mkdir(parents=True, exist_ok=True)
    # the probes after erasure only (`d3s probe`, below): those before it are the base run's own probe.json
    cmd = [sys.executable, "-m", "d3s", "erase", "--checkpoint", str(base), "--data", str(toy), "--out", str(run),
           "--parts", parts, "--probe", "none", "--no-progress"]
    t = time.time()
    log_path = base.parent / f"{run.name}.erase.log"
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd[2:])}\n")
        log.flush()
        code = subprocess.run(cmd, cwd=REPO, env=thread_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0 or not (run / "config.json").exists():
        tail = log_path.read_text().strip().splitlines()[-3:]
        return {"erase_s": round(time.time() - t, 1), "error": f"d3s erase failed ({code}): {' | '.join(tail)}"}
    (run / "done.json").write_text((base / "done.json").read_text())  # trained as the base run; do_run only probes it
    return {"erase_s": round(time.time() - t, 1), **do_run(toy, run, 0, flags)}


def probe_numbers(run: Path) -> dict | None:
    """``{kind: {ff, bb, fb, bf, chance_fg, chance_bg}}`` from a run's probe.json (validation split)."""
    from d3s.probes import by_kind

    path = run / "probe.json"
    if not path.exists():
        return None
    result = by_kind(json.loads(path.read_text()))
    numbers = {}
    for kind in ("linear", "mlp"):
        if kind not in result:
            return None
        r = result[kind]["validation"]
        numbers[kind] = {short: r[name]["top1"] for short, name in PROBES}
        numbers[kind].update(chance_fg=result[kind]["chance"]["fg"], chance_bg=result[kind]["chance"]["bg"])
    return numbers


def excess(n: dict) -> dict[str, float]:
    return {"fb": n["fb"] - n["chance_fg"], "bf": n["bf"] - n["chance_bg"]}


def fraction(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def score(method: dict, ablation: dict, erased: frozenset[str] = frozenset()) -> dict:
    """Each cross excess as a fraction of the ablation's, and PASS/FAIL per target (see the module docstring); a cross
    probe of a part in ``erased`` (those whose eraser is complete: bg from z_fg for z_fg, fg from z_bg for z_bg) is
    held to the erasure's target, the other to the critics'."""
    lin, lin_abl = excess(method["linear"]), excess(ablation["linear"])
    mlp, mlp_abl = excess(method["mlp"]), excess(ablation["mlp"])
    mlp_mean, mlp_abl_mean = (mlp["fb"] + mlp["bf"]) / 2, (mlp_abl["fb"] + mlp_abl["bf"]) / 2
    frac = {"lin_fb": fraction(lin["fb"], lin_abl["fb"]), "lin_bf": fraction(lin["bf"], lin_abl["bf"]),
            "mlp_fb": fraction(mlp["fb"], mlp_abl["fb"]), "mlp_bf": fraction(mlp["bf"], mlp_abl["bf"]),
            "mlp_mean": fraction(mlp_mean, mlp_abl_mean)}
    lin_ok = all(lin[p] <= (ERASE_EXCESS if part in erased else LIN_FRACTION * max(lin_abl[p], 0.0)) + 1e-9
                 for p, part in (("fb", "z_bg"), ("bf", "z_fg")))
    passed = {
        "ff": method["linear"]["ff"] >= ablation["linear"]["ff"] - FF_WITHIN - 1e-9,
        "bb": method["linear"]["bb"] >= BB_MIN,
        "lin": lin_ok,
        "mlp": mlp_mean <= MLP_FRACTION * max(mlp_abl_mean, 0.0) + 1e-9,
    }
    return {"fraction": frac, "excess": {"linear": lin, "mlp": mlp}, "pass": passed,
            "failed": [c for c in CRITERIA if not passed[c]]}


def worst(rows: list[dict]) -> dict | None:
    """The row failing most targets; ties: the larger linear cross fraction (the issue's headline number)."""
    scored = [r for r in rows if r.get("score")]
    if not scored:
        return None

    def key(r):
        f = r["score"]["fraction"]
        lin = max((v for v in (f["lin_fb"], f["lin_bf"]) if not math.isnan(v)), default=-math.inf)
        return (len(r["score"]["failed"]), lin)

    return max(scored, key=key)


# --- the table ---------------------------------------------------------------------------------------------

COLUMNS = ("setting", "method", "raw bg", "lin ff", "lin bb", "lin fb", "lin bf", "mlp ff", "mlp bb", "mlp fb", "mlp bf",
           "lin fb/abl", "lin bf/abl", "mlp fb/abl", "mlp bf/abl", "mlp x/abl", "complete LEACE", "ff", "bb", "lin", "mlp")


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table_cells(row: dict) -> list[str]:
    """One row's cells, in :data:`COLUMNS` order (an ablation row has no fractions nor verdicts)."""
    n = row.get("numbers")
    cells = [row["setting"], row["method"], _num(row.get("raw_bg"))]
    if n is None:
        return cells + ["-"] * (len(COLUMNS) - 3 - 4) + ["error" if row.get("error") else "missing"] * 4
    cells += [_num(n[k][p]) for k in ("linear", "mlp") for p in ("ff", "bb", "fb", "bf")]
    s = row.get("score")
    if s is None:
        return cells + ["-"] * (len(COLUMNS) - len(cells))
    f = s["fraction"]
    cells += [_num(f[k], 2) for k in ("lin_fb", "lin_bf", "mlp_fb", "mlp_bf", "mlp_mean")]
    cells.append("+".join(row.get("complete_erasers") or []) or "-")  # parts held to the erasure's target
    return cells + ["PASS" if s["pass"][c] else "FAIL" for c in CRITERIA]


def format_text(rows: list[dict]) -> str:
    cells = [list(COLUMNS)] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) if i < 2 else c[i].rjust(widths[i]) for i in range(len(COLUMNS)))
                     for c in cells)


def worst_line(rows: list[dict]) -> str:
    w = worst(rows)
    if w is None:
        return "worst: no row has both a run and its ablation probed"
    s = w["score"]
    f = s["fraction"]
    failed = ", ".join(s["failed"]) or "none"
    return (f"worst: {w['setting']} / {w['method']}: {len(s['failed'])} of {len(CRITERIA)} targets fail ({failed}); "
            f"linear fg_from_bg {_num(f['lin_fb'], 2)} and bg_from_fg {_num(f['lin_bf'], 2)} of the ablation's excess, "
            f"MLP mean {_num(f['mlp_mean'], 2)}")


def format_markdown(rows: list[dict], ablations: list[dict], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * 2 + "---:|" * (len(COLUMNS) - 2)]
    for r in rows + ablations:
        lines.append("| " + " | ".join(table_cells(r)) + " |")
    lines += ["", worst_line(rows), ""]
    return "\n".join(lines)


def _finite(v):
    """``v`` with NaN as None (JSON has no NaN)."""
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


# --- main --------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, metavar="DIR", help="toys, runs, grid.json and grid.md go here (rerun to resume)")
    ap.add_argument("--methods", default=DEFAULTS, metavar="LIST",
                    help=f"methods scored beside the ablation: names of {', '.join(METHODS)} or NAME=FLAGS (extra `d3s train` "
                         "flags), comma-separated (default: %(default)s, the defaults)")
    ap.add_argument("--common", metavar="NAME=FLAGS",
                    help="d3s train flags added to every run, the ablation included (runs named METHOD@NAME, in their own "
                         "folders): a candidate that changes what the ablation shares, scored against the same ablation "
                         "with that change, e.g. --common \"wd=--hparams '{\\\"weight_decay\\\": 0.0001}'\"")
    ap.add_argument("--rows", metavar="NAMES", help=f"run only these settings: {', '.join(s.name for s in GRID)} (default: all)")
    ap.add_argument("--steps", type=int, metavar="N",
                    help=f"d3s train --iters of every run (default: {DEFAULT_STEPS}; --quick: {QUICK_STEPS})")
    ap.add_argument("--jobs", type=int, default=2, metavar="N", help="runs side by side, one thread each (default: %(default)s)")
    ap.add_argument("--quick", action="store_true",
                    help=f"tiny toys ({QUICK['fg_classes']} fg x {QUICK['bg_classes']} bg, {QUICK['dim']}-d) and few steps: a smoke test")
    args = ap.parse_args(argv)
    try:
        return run_grid(args)
    except GridError as err:
        print(f"disentangle_grid: error: {err}", file=sys.stderr)
        return 2


def run_grid(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    ablation, methods, common = sweep(args.methods, args.common)
    settings = pick_rows(args.rows)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    if steps < 1:
        raise GridError(f"--steps must be at least 1, got {steps}.")
    if not 1 <= args.jobs <= 64:
        raise GridError(f"--jobs must be in 1..64, got {args.jobs}.")
    out = Path(args.out)
    toys_dir, runs_dir = out / ("toys-quick" if args.quick else "toys"), out / ("runs-quick" if args.quick else "runs")
    t0 = time.time()

    toys = {}
    for s in tqdm(settings, desc="toys", unit="toy", disable=len(settings) < 2):
        toys[s.name] = ensure_toy(s, args.quick, toys_dir)

    everything = {ablation[0]: ablation[1], **methods}
    copies = {m: b for m, f in everything.items() if (b := erase_base(f, everything)) is not None}  # erase a trained copy
    jobs = [(s.name, m) for s in settings for m in everything if m not in copies]
    spent: dict[tuple[str, str], dict] = {}

    def chain(name: str, m: str) -> dict[tuple[str, str], dict]:
        """One method's run, then the erased copies of it: one worker, in order."""
        toy = Path(toys[name]["folder"])
        base = run_folder(runs_dir, name, m, steps)
        done = {(name, m): do_run(toy, base, steps, everything[m])}
        for e, b in copies.items():
            if b == m:
                done[(name, e)] = do_erase_copy(toy, base, run_folder(runs_dir, name, e, steps), everything[e])
        return done

    def finished(job) -> bool:
        name, m = job
        return all((run_folder(runs_dir, name, x, steps) / "probe.json").exists() for x in [m, *(e for e, b in copies.items() if b == m)])

    todo = [j for j in jobs if not finished(j)]
    todo.sort(key=lambda j: -toys[j[0]]["toy"]["train_per_pair"])  # the longest runs first (stable), so the jobs end together
    print(f"{len(settings)} settings x {len(everything)} runs ({', '.join(everything)}; erased copies: {', '.join(copies) or 'none'}), "
          f"{steps} steps; {len(jobs) - len(todo)} already probed, {len(todo)} to do with {args.jobs} jobs; runs in {runs_dir}",
          flush=True)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(chain, name, m): (name, m) for name, m in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="runs", unit="run", disable=not futures):
            for key, value in fut.result().items():
                spent[key] = value
                if "error" in value:
                    print(f"{key[0]} / {key[1]}: {value['error']}", file=sys.stderr, flush=True)

    rows, ablations = [], []
    for s in settings:
        abl_run = run_folder(runs_dir, s.name, ablation[0], steps)
        abl = probe_numbers(abl_run)
        base = {"setting": s.name, "raw_bg": toys[s.name]["raw"]["bg_first"]}
        ablations.append({**base, "method": ablation[0], "flags": list(ablation[1]), "numbers": abl, "run": str(abl_run),
                          "commands": [shlex.join(c[2:]) for c in run_commands(Path(toys[s.name]["folder"]), abl_run, steps, ablation[1])],
                          **spent.get((s.name, ablation[0]), {})})
        for m, flags in methods.items():
            run = run_folder(runs_dir, s.name, m, steps)
            numbers = probe_numbers(run)
            row = {**base, "method": m, "flags": list(flags), "erases": sorted(erases(m, flags)),
                   "complete_erasers": sorted(complete_erasers(run)), "numbers": numbers, "run": str(run),
                   "commands": [shlex.join(c[2:]) for c in run_commands(Path(toys[s.name]["folder"]), run, steps, flags)],
                   **spent.get((s.name, m), {})}
            if numbers is not None and abl is not None:
                row["score"] = score(numbers, abl, frozenset(row["complete_erasers"]))
            rows.append(row)

    text = format_text(rows)
    last = worst_line(rows)
    print(text)
    print(last)
    size = QUICK if args.quick else PAPER
    header = (f"# Disentanglement grid: {', '.join(methods)} against the ablation (`--critic-weight 0`"
              f"{', every run with ' + shlex.join(common) if common else ''})\n\n"
              f"Toys {size['dim']}-d, {size['fg_classes']} fg x {size['bg_classes']} bg; {steps} steps; validation top-1. "
              f"Targets: ff within {FF_WITHIN} of the ablation's (linear); bb >= {BB_MIN} (linear); each linear cross excess "
              f"<= {LIN_FRACTION} of the ablation's (<= {ERASE_EXCESS} over chance when erasing); MLP mean cross excess "
              f"<= {MLP_FRACTION} of the ablation's. raw bg: a linear bg probe on the toy's raw first features.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.md").write_text(format_markdown(rows, ablations, header))
    result = {"steps": steps, "quick": args.quick, "size": size, "methods": {m: list(f) for m, f in methods.items()},
              "common": list(common), "ablation": list(ablation[1]), "targets": {"ff_within": FF_WITHIN, "bb_min": BB_MIN, "lin_fraction": LIN_FRACTION,
                                                         "erase_excess": ERASE_EXCESS, "mlp_fraction": MLP_FRACTION},
              "settings": [toys[s.name] for s in settings], "rows": rows, "ablations": ablations,
              "worst": (worst(rows) or {}).get("setting"), "worst_line": last, "seconds": round(time.time() - t0, 1)}
    (out / "grid.json").write_text(json.dumps(_finite(result), indent=2) + "\n")
    print(f"wrote {out / 'grid.json'} and {out / 'grid.md'} ({time.time() - t0:.0f} s)", file=sys.stderr)
    return 1 if any(r.get("error") for r in rows + ablations) or any(r["numbers"] is None for r in rows + ablations) else 0


if __name__ == "__main__":
    sys.exit(main())
