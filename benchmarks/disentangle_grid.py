"""Score the disentanglement defaults on a fixed family of features toys, held out and over fresh seeds.

One toy cannot tell whether the defaults work, and one seed cannot tell a margin from noise. So for each setting of
:data:`GRID` (toys of ``d3s toy --kind features`` at the paper's sizes that move the regime one knob at a time: bg
strength, rows per class, how fg and bg are mixed, nuisance) and each seed pair of ``--seeds`` (the toy's seed, the
training's seed; by default three pairs drawn after the defaults were fixed), the script

1. writes the toy, with 2 validation rows per (fg, bg) pair, and reads bg from its raw first 1798 features with a
   linear probe (``raw bg``: how strongly the background is encoded);
2. trains the ablation (``--critic-weight 0 --no-erase``: the same training, optimizer and weight decay, without
   critics or erasers) and the methods of ``--methods`` with ``d3s train`` (one thread each, ``--jobs`` side by side).
   A method that erases (the defaults, ``wasserstein+erase``: ``d3s train`` with no flags) is its un-erased twin's
   run erased with ``d3s erase --out``: the same erasers ``d3s train`` fits after its last step;
3. probes each run on rows that neither the encoder, its critics nor its erasers were fitted on: ``d3s probe`` cross-
   fitted on the validation split (2 folds, each scored by probes fitted on the other): the linear probe for all four
   probes (``probe.json``), the MLP and kernel probes for the two cross probes (``skeptics.json``);

and prints one row per setting and method: the mean and spread (standard deviation over seeds) of linear ff, bb,
fb, bf (fg_from_fg, bg_from_bg, fg_from_bg, bg_from_fg: validation top-1) and of the *skeptic*'s fb and bf (the best
of the linear, MLP and kernel probes), each cross excess over chance as a fraction of the ablation's (worst seed),
and a verdict per target: PASS when it holds on every seed, else ``FAIL:k/n`` (k of n seeds fail). The last line names
the worst row. ``--out`` gets ``grid.json`` (every seed's numbers, the commands) and ``grid.md`` (the table).

Targets (each seed against the ablation of the same seeds):

- ``ff``: linear fg_from_fg within 0.05 of the ablation's, and at least 0.90 where the ablation reaches 0.90;
- ``bb``: linear bg_from_bg at least 0.90;
- ``lin``: each linear cross probe alone: its excess over chance at most half the ablation's, and at most 0.02 where
  LEACE's eraser of its part is complete (rank k - 1 for k classes, or the part's width; bg from z_fg: 9 of 9);
- ``skeptic``: each cross probe's skeptic excess at most 0.75 of the ablation's skeptic excess.

A cross probe whose ablation excess is under 0.02 has nothing to remove and is not judged (``-``). ``first rule`` is
the erasure target as first written, before any run was scored: both linear cross probes within 0.02 of chance for
every method that erases, complete eraser or not.

Resumable: a run whose probes exist is not redone, a trained one (``done.json``) is only probed, an interrupted
``d3s train`` continues from its checkpoint. Toys are ``TOYS/<setting>/seed<T>``, runs ``RUNS/<setting>/seed<T>/
<method>-<steps>``, so other seeds or ``--steps`` never mix with earlier runs.

Cost: at the paper's sizes a run is about 0.3 s a step on one thread beside another run (``d3s train``'s 2000 steps
or the grid's default 1000) and 4-5 minutes of probes; the measured time of the whole grid is in
docs/disentanglement.md.

::

    python benchmarks/disentangle_grid.py --out out/grid                         # 9 settings x 3 seeds, paper sizes
    python benchmarks/disentangle_grid.py --out out/grid --steps 2000            # at d3s train's own length
    python benchmarks/disentangle_grid.py --out out/grid --rows product --methods wasserstein,wasserstein+erase
    python benchmarks/disentangle_grid.py --out out/grid-quick --quick --steps 20 --seeds 101:1   # a smoke test
    python benchmarks/disentangle_grid.py --out out/grid --no-train              # the table of the runs done so far
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
import statistics
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
    """

    name: str
    what: str
    toy: dict = field(default_factory=dict)


# The rows and their knobs were fixed before any tuning of the method on them (issue 17): to score anything else, add a
# row with a new name; never edit one. The knob values were set once from the raw features alone (linear probes on
# the toy, no training): `strong-bg` reads bg at 1.00 from the raw first 1798 features, `weak-bg` at 0.94-0.96, and
# each mixing and the nuisance regime leave fg readable from the raw features by a linear read-out at 0.69-0.98.
GRID: tuple[Setting, ...] = (
    Setting("default", "the default features toy (relu2, bg scale 1, 1 train row per pair)", {}),
    Setting("strong-bg-2pp", "bg strongly encoded (bg scale 2.5: raw linear bg 1.00) and 2 train rows per pair "
                             "(20 per fg class, memorised)", {"bg_scale": 2.5, "train_per_pair": 2}),
    Setting("strong-bg-1pp", "the same bg strength with 1 train row per pair (10 per fg class)", {"bg_scale": 2.5}),
    Setting("relu1", "one ReLU layer: each feature a rectified sum of the codes", {"mixing": "relu1"}),
    Setting("gated", "bg gates fg: each hidden unit's fg input scaled by a bg-set factor in (0, 2)", {"mixing": "gated"}),
    Setting("rotate", "the fg code turned by bg-dependent angles (up to 45 degrees per plane)", {"mixing": "rotate"}),
    Setting("product", "every hidden unit (fg proj. + 1) x (bg proj. + 1): fg, bg and their product", {"mixing": "product"}),
    Setting("strong-nuisance", "64 nuisance dimensions at scale 1.25 (default: 32 at 1)", {"nuisance": 64, "nuisance_scale": 1.25}),
    Setting("weak-bg", "bg weakly encoded (bg scale 0.8: raw linear bg 0.94-0.96)", {"bg_scale": 0.8}),
)
# (toy seed, training seed) pairs, drawn after the defaults were fixed: no run that chose anything used them
SEEDS: tuple[tuple[int, int], ...] = ((101, 1), (102, 2), (103, 3))
VAL_PER_PAIR = 2  # validation rows per pair: the probes are cross-fitted on them (20,000 rows at the paper's sizes)

# --methods NAME: the `d3s train` flags beside the toy's (the defaults are no flags). "+erase" is `d3s train`'s default
# (LEACE after the last step) spelled out; the names without it are the same training with --no-erase.
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
DEFAULT_STEPS = 1000  # the defaults' own `d3s train --iters` is 2000: `--steps 2000` runs that length
QUICK_STEPS = 60

FF_WITHIN, FF_FLOOR, BB_MIN = 0.05, 0.90, 0.90
LIN_FRACTION, ERASE_EXCESS, SKEPTIC_FRACTION = 0.5, 0.02, 0.75
NOTHING_TO_REMOVE = 0.02  # a cross probe whose ablation excess is under this is not judged
LINEAR_PROBES = (("ff", "fg_from_fg"), ("bb", "bg_from_bg"), ("fb", "fg_from_bg"), ("bf", "bg_from_fg"))
CROSS = (("fb", "fg_from_bg", "z_bg"), ("bf", "bg_from_fg", "z_fg"))  # short name, probe, the part it reads
SKEPTIC_KINDS = ("linear", "mlp", "kernel")
CRITERIA = ("ff", "bb", "lin", "skeptic")


class GridError(ValueError):
    """Bad options, or an output folder holding another grid's toy."""


def thread_env() -> dict[str, str]:
    """The environment of every subprocess: one thread each, offline."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# --- options -----------------------------------------------------------------------------------------------

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


def parse_seeds(spec: str | None) -> tuple[tuple[int, int], ...]:
    """``--seeds``: ``TOY:TRAIN`` pairs, comma-separated (default :data:`SEEDS`)."""
    if not spec:
        return SEEDS
    pairs = []
    for entry in (e.strip() for e in spec.split(",") if e.strip()):
        toy, colon, train = entry.partition(":")
        if not colon or not toy.isdigit() or not train.isdigit():
            raise GridError(f"--seeds: give TOY:TRAIN pairs of seeds, e.g. 101:1,102:2; got {entry!r}.")
        pairs.append((int(toy), int(train)))
    if not pairs or len({t for t, _ in pairs}) != len(pairs):
        raise GridError(f"--seeds: give at least one pair, each with a toy seed of its own; got {spec!r}.")
    return tuple(pairs)


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


@dataclass
class Sweep:
    """The runs of a sweep: the ablation, the methods scored, and the trained runs the erasing methods are copies of.

    Args:
        ablation (`tuple`): ``(name, flags)`` of the reference.
        methods (`dict`): ``{name: flags}`` of the methods scored.
        bases (`dict`): ``{erasing method: name of its un-erased twin}``; a twin not among ``methods`` is trained,
            not scored.
        trained (`dict`): ``{name: flags}`` of every run that is trained: the ablation, the methods that do not erase,
            the twins.
        common (`tuple`): the flags of ``--common``.
    """

    ablation: tuple[str, tuple[str, ...]]
    methods: dict[str, tuple[str, ...]]
    bases: dict[str, str]
    trained: dict[str, tuple[str, ...]]
    common: tuple[str, ...]

    @property
    def scored(self) -> dict[str, tuple[str, ...]]:
        return {self.ablation[0]: self.ablation[1], **self.methods}

    def flags(self, name: str) -> tuple[str, ...]:
        return self.scored.get(name) or self.trained[name]


def sweep(methods_spec: str, common_spec: str | None) -> Sweep:
    """The runs of a sweep from ``--methods`` and ``--common`` (names suffixed ``@NAME`` and flags extended by
    ``--common``'s); each erasing method gets the un-erased twin it is a copy of."""
    tag, common = parse_common(common_spec)
    methods = {m + tag: with_common(f, common) for m, f in parse_methods(methods_spec).items()}
    ablation = (ABLATION[0] + tag, with_common(ABLATION[1], common))
    trained = {ablation[0]: ablation[1], **{m: f for m, f in methods.items() if "--erase" not in f}}
    bases = {}
    for m, f in methods.items():
        if "--erase" not in f:
            continue
        twin = (*_without_erasure(f), "--no-erase")
        name = next((n for n, g in trained.items() if (*_without_erasure(g), "--no-erase") == twin and "--no-erase" in g), None)
        if name is None:
            known = next((n for n, g in METHODS.items() if (*_without_erasure(with_common(g, common)), "--no-erase") == twin
                          and "--no-erase" in g), None)
            name = (known + tag) if known else f"{m}-twin"
            trained[name] = twin
        bases[m] = name
    return Sweep(ablation, methods, bases, trained, common)


def _without_erasure(flags: tuple[str, ...]) -> tuple[str, ...]:
    """``flags`` without ``--erase``, ``--no-erase`` and ``--erase-parts PARTS``: what the training itself depends on."""
    return tuple(f for i, f in enumerate(flags)
                 if f not in ("--erase", "--no-erase", "--erase-parts") and (i == 0 or flags[i - 1] != "--erase-parts"))


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


def erases(flags: tuple[str, ...]) -> bool:
    return "--erase" in flags


# --- the toys ----------------------------------------------------------------------------------------------

def toy_config(setting: Setting, quick: bool, out: Path, seed: int):
    from d3s.toy import FeatureToyConfig

    return FeatureToyConfig(out=str(out), **(QUICK if quick else PAPER), **{"val_per_pair": VAL_PER_PAIR, **setting.toy}, seed=seed)


TOY_FLAGS = ("fg_classes", "bg_classes", "dim", "train_per_pair", "val_per_pair", "mixing", "bg_scale", "fg_noise", "bg_noise",
             "nuisance", "nuisance_scale", "noise_dims", "paired", "seed")  # what `d3s toy --kind features` takes


def toy_command(cfg) -> list[str]:
    """``d3s toy --kind features`` with every knob of ``cfg`` spelled out."""
    from d3s.toy import FeatureToyConfig

    default = asdict(FeatureToyConfig(out=""))
    hidden = [k for k, v in asdict(cfg).items() if k not in {*TOY_FLAGS, "out"} and v != default[k]]
    if hidden:
        raise GridError(f"a grid toy may only set what `d3s toy` takes; {', '.join(hidden)} is not a flag.")
    cmd = [sys.executable, "-m", "d3s", "toy", "--kind", "features", "--out", cfg.out]
    for k in sorted(TOY_FLAGS):
        value = getattr(cfg, k)
        if isinstance(value, bool):
            cmd += [f"--{k.replace('_', '-')}"] if value else []
        else:
            cmd += [f"--{k.replace('_', '-')}", str(value)]
    return cmd


def ensure_toy(setting: Setting, quick: bool, root: Path, seed: int, make: bool = True) -> dict:
    """Write the setting's toy of ``seed`` (unless the folder already holds exactly it) and its raw linear bg probe
    (cross-fitted on validation, as every probe of the grid). With ``make=False`` a toy not written yet is left
    unwritten (its ``raw`` is None)."""
    import torch

    from d3s.data import FeatureTable, load_split
    from d3s.probes import run_probes

    out = root / setting.name / f"seed{seed}"
    cfg = toy_config(setting, quick, out, seed)
    want = {"kind": "features", **{k: v for k, v in asdict(cfg).items() if k != "out"}}
    meta = out / "d3s_toy.json"
    cmd = toy_command(cfg)
    record = {"name": setting.name, "what": setting.what, "seed": seed, "toy": want, "folder": str(out), "command": shlex.join(cmd[2:])}
    if not make and not (out / "raw_probe.json").exists():
        return {**record, "raw": None}
    if meta.exists():
        from d3s.toy import FeatureToyConfig

        default = asdict(FeatureToyConfig(out=""))  # a knob newer than the folder's record has its default there
        have = {k: v for k, v in json.loads(meta.read_text()).items() if k != "out"}
        diff = sorted(k for k in set(have) | set(want) if have.get(k, default.get(k)) != want.get(k, default.get(k)))
        if diff:
            raise GridError(f"{out} holds another toy ({', '.join(diff)} differ); give another --out.")
    else:
        if out.exists():
            shutil.rmtree(out)  # a toy folder without its d3s_toy.json is an interrupted write of ours
        proc = subprocess.run(cmd, cwd=REPO, env=thread_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            raise GridError(f"d3s toy for {setting.name} (seed {seed}) failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    raw_file = out / "raw_probe.json"
    if not raw_file.exists():
        torch.set_num_threads(1)
        va = FeatureTable(load_split(str(out), "validation"))
        k = cfg.dim * 1798 // 2048  # the paper's z_fg share: "the raw first 1798 dims"
        r = run_probes({"validation": {"z_fg": va.x[:, :k], "z_bg": va.x[:, k:], "fg": va.fg, "bg": va.bg}}, names=("bg_from_fg",))
        raw = {"bg_first": round(r["linear"]["validation"]["bg_from_fg"]["top1"], 4), "first_dims": k,
               "fit": r["linear"]["fit"]["validation"]["text"]}
        raw_file.write_text(json.dumps(raw, indent=2) + "\n")
    return {**record, "raw": json.loads(raw_file.read_text())}


# --- the runs ----------------------------------------------------------------------------------------------

def run_folder(runs: Path, setting: str, seed: int, method: str, steps: int) -> Path:
    return runs / setting / f"seed{seed}" / f"{method}-{steps}"


def probe_commands(data: Path, run: Path) -> list[tuple[str, list[str], Path]]:
    """The two ``d3s probe`` calls of a run, held out (cross-fitted on validation): the linear probe of all four
    probes, and the skeptics (MLP, kernel) of the two cross probes."""
    base = [sys.executable, "-m", "d3s", "probe", "--data", str(data), "--checkpoint", str(run)]
    return [("probe", [*base, "--probe", "linear", "--out", str(run / "probe.json")], run / "probe.json"),
            ("skeptics", [*base, "--probe", "mlp,kernel", "--probes", "cross", "--out", str(run / "skeptics.json")],
             run / "skeptics.json")]


def train_command(data: Path, run: Path, steps: int, seed: int, flags: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "d3s", "train", "--data", str(data), "--out", str(run), "--iters", str(steps), "--no-progress",
            "--erase-probe", "none", "--seed", str(seed), *flags]  # the grid probes every run itself


def _run_logged(what: str, cmd: list[str], log_path: Path, done: Path) -> dict:
    """Run ``cmd`` with its output appended to ``log_path``; seconds spent, and an error when ``done`` is not there after."""
    t = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shlex.join(cmd[2:])}\n")
        log.flush()
        code = subprocess.run(cmd, cwd=REPO, env=thread_env(), stdout=log, stderr=subprocess.STDOUT).returncode
    spent = {f"{what}_s": round(time.time() - t, 1)}
    if code != 0 or not done.exists():
        tail = log_path.read_text().strip().splitlines()[-3:]
        spent["error"] = f"d3s {cmd[3]} failed ({code}): {' | '.join(tail)}"
    return spent


def do_probes(data: Path, run: Path) -> dict:
    """Both probe calls of a run, each unless its file exists."""
    spent: dict = {}
    for what, cmd, done in probe_commands(data, run):
        if not done.exists():
            spent.update(_run_logged(what, cmd, run / f"{what}.log", done))
            if "error" in spent:
                break
    return spent


def do_train(data: Path, run: Path, steps: int, seed: int, flags: tuple[str, ...]) -> dict:
    """Train one run (unless done)."""
    run.mkdir(parents=True, exist_ok=True)
    if (run / "done.json").exists():
        return {}
    return _run_logged("train", train_command(data, run, steps, seed, flags), run / "train.log", run / "done.json")


def do_erase_copy(data: Path, base: Path, run: Path, flags: tuple[str, ...]) -> dict:
    """``d3s erase --checkpoint BASE --out RUN`` with the method's parts: the erasers ``d3s train`` fits after its last
    step, on a copy of the trained twin (unless done)."""
    if (run / "done.json").exists():
        return {}
    if not (base / "done.json").exists():
        return {"error": f"{base} is not trained; cannot erase a copy of it"}
    parts = flags[flags.index("--erase-parts") + 1] if "--erase-parts" in flags else "auto"  # `d3s train --erase`'s default
    if run.exists():
        shutil.rmtree(run)  # a copy interrupted mid-way: `d3s erase --out` wants a new folder
    run.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "d3s", "erase", "--checkpoint", str(base), "--data", str(data), "--out", str(run),
           "--parts", parts, "--probe", "none", "--no-progress"]
    spent = _run_logged("erase", cmd, base.parent / f"{run.name}.erase.log", run / "config.json")
    if "error" not in spent:
        (run / "done.json").write_text((base / "done.json").read_text())  # trained as the base run
    return spent


def run_commands(data: Path, run: Path, steps: int, seed: int, flags: tuple[str, ...], base: Path | None = None) -> list[str]:
    """The commands that make a run, as a user would type them (``d3s ...``)."""
    if base is not None:
        parts = flags[flags.index("--erase-parts") + 1] if "--erase-parts" in flags else "auto"
        make = ["d3s", "erase", "--checkpoint", str(base), "--data", str(data), "--out", str(run), "--parts", parts]
        first = [shlex.join(train_command(data, base, steps, seed, (*_without_erasure(flags), "--no-erase"))[2:]), shlex.join(make)]
    else:
        first = [shlex.join(train_command(data, run, steps, seed, flags)[2:])]
    return first + [shlex.join(cmd[2:]) for _, cmd, _ in probe_commands(data, run)]


# --- the numbers -------------------------------------------------------------------------------------------

def probe_numbers(run: Path) -> dict | None:
    """A run's held-out numbers (validation): ``{"linear": {ff, bb, fb, bf, chance_fg, chance_bg}, "mlp": {fb, bf},
    "kernel": {fb, bf}, "skeptic": {fb, bf}, "skeptic_kind": {fb, bf}, "fit": text, "converged": whether every linear probe
    converged}``; None until both files exist."""
    from d3s.probes import by_kind

    if not (run / "probe.json").exists() or not (run / "skeptics.json").exists():
        return None
    linear = by_kind(json.loads((run / "probe.json").read_text()))["linear"]
    skeptics = json.loads((run / "skeptics.json").read_text())
    r = linear["validation"]
    numbers = {"linear": {short: r[name]["top1"] for short, name in LINEAR_PROBES},
               "fit": (linear.get("fit") or {}).get("validation", {}).get("text", "fitted on train"),
               "converged": all(r[name].get("converged", True) for _, name in LINEAR_PROBES)}
    numbers["linear"].update(chance_fg=linear["chance"]["fg"], chance_bg=linear["chance"]["bg"])
    for kind in ("mlp", "kernel"):
        numbers[kind] = {short: skeptics[kind]["validation"][name]["top1"] for short, name, _ in CROSS}
    numbers["skeptic"], numbers["skeptic_kind"] = {}, {}
    for short, _, _ in CROSS:
        kind = max(SKEPTIC_KINDS, key=lambda k: numbers[k][short])
        numbers["skeptic"][short], numbers["skeptic_kind"][short] = numbers[kind][short], kind
    return numbers


def excess(n: dict, values: dict | None = None) -> dict[str, float]:
    """Each cross probe's reading over chance (``values``: other readings of the same probes, e.g. the skeptic's)."""
    v = values or n
    return {"fb": v["fb"] - n["chance_fg"], "bf": v["bf"] - n["chance_bg"]}


def fraction(value: float, reference: float) -> float:
    return value / reference if reference > 0 else math.nan


def score(method: dict, ablation: dict, erased: frozenset[str] = frozenset(), erasing: bool = False) -> dict:
    """One seed's verdicts against the ablation of the same seeds (module docstring): each cross probe judged alone;
    one whose ablation excess is under :data:`NOTHING_TO_REMOVE` is not judged. ``erased``: the parts whose eraser is
    complete; ``erasing``: the method erases (for the first rule)."""
    lin, lin_abl = excess(method["linear"]), excess(ablation["linear"])
    sk, sk_abl = excess(method["linear"], method["skeptic"]), excess(ablation["linear"], ablation["skeptic"])
    frac = {f"lin_{p}": fraction(lin[p], lin_abl[p]) for p in ("fb", "bf")}
    frac.update({f"sk_{p}": fraction(sk[p], sk_abl[p]) for p in ("fb", "bf")})
    judged = {"lin": {p: lin_abl[p] >= NOTHING_TO_REMOVE for p, _, _ in CROSS},
              "skeptic": {p: sk_abl[p] >= NOTHING_TO_REMOVE for p, _, _ in CROSS}}
    lin_ok = {p: not judged["lin"][p] or lin[p] <= (ERASE_EXCESS if part in erased else LIN_FRACTION * lin_abl[p]) + 1e-9
              for p, _, part in CROSS}
    sk_ok = {p: not judged["skeptic"][p] or sk[p] <= SKEPTIC_FRACTION * sk_abl[p] + 1e-9 for p, _, _ in CROSS}
    ff, ff_abl = method["linear"]["ff"], ablation["linear"]["ff"]
    passed = {
        "ff": ff >= ff_abl - FF_WITHIN - 1e-9 and (ff >= FF_FLOOR or ff_abl < FF_FLOOR),
        "bb": method["linear"]["bb"] >= BB_MIN,
        "lin": all(lin_ok.values()),
        "skeptic": all(sk_ok.values()),
    }
    return {"fraction": frac, "excess": {"linear": lin, "skeptic": sk}, "judged": judged, "pass": passed,
            "probe_pass": {"lin": lin_ok, "skeptic": sk_ok}, "failed": [c for c in CRITERIA if not passed[c]],
            "first_rule": all(lin[p] <= ERASE_EXCESS + 1e-9 for p in ("fb", "bf")) if erasing else None}


def number_stats(seeds: list[dict]) -> dict:
    """Mean, sd, min and max over ``seeds`` (rows with ``numbers``) of the linear and skeptic probes."""

    def stats(values: list[float]) -> dict:
        return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    numbers = {f"lin_{k}": stats([s["numbers"]["linear"][k] for s in seeds]) for k in ("ff", "bb", "fb", "bf")}
    numbers.update({f"sk_{k}": stats([s["numbers"]["skeptic"][k] for s in seeds]) for k in ("fb", "bf")})
    return numbers


def summarise(seeds: list[dict]) -> dict:
    """One setting and method over its seeds: mean and spread of each number, the worst fraction, and the verdicts
    (a target passes when it holds on every seed). ``seeds``: rows with ``numbers`` and ``score``."""
    done = [s for s in seeds if s.get("score")]
    if not done:
        return {"seeds": 0, "of": len(seeds)}

    numbers = number_stats(done)
    worst_frac = {}
    for k in done[0]["score"]["fraction"]:
        finite = [s["score"]["fraction"][k] for s in done if not math.isnan(s["score"]["fraction"][k])]
        worst_frac[k] = max(finite) if finite else math.nan
    failing = {c: sum(not s["score"]["pass"][c] for s in done) for c in CRITERIA}
    judged = {c: any(any(s["score"]["judged"][c].values()) for s in done) for c in ("lin", "skeptic")}
    first = [s["score"]["first_rule"] for s in done if s["score"]["first_rule"] is not None]
    return {"seeds": len(done), "of": len(seeds), "numbers": numbers, "worst_fraction": worst_frac, "failing": failing,
            "judged": judged, "failed": [c for c in CRITERIA if failing[c]],
            "first_rule_failing": sum(not f for f in first) if first else None,
            "skeptic_kinds": sorted({s["numbers"]["skeptic_kind"][p] for s in done for p in ("fb", "bf")})}


def worst(rows: list[dict]) -> dict | None:
    """The row failing most targets; ties: the larger worst linear cross fraction."""
    scored = [r for r in rows if r.get("summary", {}).get("seeds")]
    if not scored:
        return None

    def key(r):
        f = r["summary"]["worst_fraction"]
        lin = max((v for v in (f["lin_fb"], f["lin_bf"]) if not math.isnan(v)), default=-math.inf)
        return (len(r["summary"]["failed"]), sum(r["summary"]["failing"].values()), lin)

    return max(scored, key=key)


# --- the table ---------------------------------------------------------------------------------------------

COLUMNS = ("setting", "method", "seeds", "raw bg", "lin ff", "lin bb", "lin fb", "lin bf", "skeptic fb", "skeptic bf",
           "lin fb/abl", "lin bf/abl", "sk fb/abl", "sk bf/abl", "complete LEACE", "ff", "bb", "lin", "skeptic", "first rule")


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _mean_sd(stats: dict | None) -> str:
    return "-" if not stats else f"{stats['mean']:.3f}±{stats['sd']:.3f}"


def _verdict(failing: int, seeds: int, judged: bool = True) -> str:
    if not judged:
        return "-"
    return "PASS" if failing == 0 else f"FAIL:{failing}/{seeds}"


def table_cells(row: dict) -> list[str]:
    """One row's cells, in :data:`COLUMNS` order (an ablation row has no fractions nor verdicts)."""
    s = row.get("summary") or {}
    cells = [row["setting"], row["method"], f"{s.get('seeds', 0)}/{s.get('of', 0)}", _num(row.get("raw_bg"))]
    if not s.get("seeds"):
        return cells + ["-"] * (len(COLUMNS) - len(cells) - 5) + ["error" if row.get("error") else "missing"] * 5
    n = s["numbers"]
    cells += [_mean_sd(n[k]) for k in ("lin_ff", "lin_bb", "lin_fb", "lin_bf", "sk_fb", "sk_bf")]
    if "failing" not in s:  # the ablation: the reference, not judged
        return cells + ["-"] * (len(COLUMNS) - len(cells))
    f = s["worst_fraction"]
    cells += [_num(f[k], 2) for k in ("lin_fb", "lin_bf", "sk_fb", "sk_bf")]
    cells.append("+".join(row.get("complete_erasers") or []) or "-")  # parts held to the erasure's target
    cells += [_verdict(s["failing"]["ff"], s["seeds"]), _verdict(s["failing"]["bb"], s["seeds"]),
              _verdict(s["failing"]["lin"], s["seeds"], s["judged"]["lin"]),
              _verdict(s["failing"]["skeptic"], s["seeds"], s["judged"]["skeptic"])]
    cells.append("-" if s["first_rule_failing"] is None else _verdict(s["first_rule_failing"], s["seeds"]))
    return cells


def format_text(rows: list[dict]) -> str:
    cells = [list(COLUMNS)] + [table_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) if i < 2 else c[i].rjust(widths[i]) for i in range(len(COLUMNS)))
                     for c in cells)


def worst_line(rows: list[dict]) -> str:
    w = worst(rows)
    if w is None:
        return "worst: no row has both a run and its ablation probed"
    s = w["summary"]
    f = s["worst_fraction"]
    failed = ", ".join(f"{c} on {s['failing'][c]} of {s['seeds']} seeds" for c in s["failed"]) or "none"
    return (f"worst: {w['setting']} / {w['method']}: {len(s['failed'])} of {len(CRITERIA)} targets fail ({failed}); worst seed: "
            f"linear fg_from_bg {_num(f['lin_fb'], 2)} and bg_from_fg {_num(f['lin_bf'], 2)} of the ablation's excess, "
            f"skeptic {_num(f['sk_fb'], 2)} and {_num(f['sk_bf'], 2)}")


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


# --- running a sweep ------------------------------------------------------------------------------------------

@dataclass
class Cell:
    """Where one (setting, seed) runs: its data, training seed, steps, and the folder of each run by name."""

    setting: str
    toy_seed: int
    train_seed: int
    data: Path
    steps: int
    runs_dir: Path
    extra: tuple[str, ...] = ()  # `d3s train` flags of every run of the cell (the image toys' backbone and augmentation)

    def folder(self, name: str) -> Path:
        return run_folder(self.runs_dir, self.setting, self.toy_seed, name, self.steps)


def run_cell(cell: Cell, plan: Sweep, trained: str) -> dict[str, dict]:
    """One trained run of a cell, then the erased copies of it and the probes of each run scored: one worker, in order."""
    spent = {trained: do_train(cell.data, cell.folder(trained), cell.steps, cell.train_seed, (*cell.extra, *plan.trained[trained]))}
    for m, base in plan.bases.items():
        if base == trained and "error" not in spent[trained]:
            spent[m] = do_erase_copy(cell.data, cell.folder(trained), cell.folder(m), plan.methods[m])
    for name in list(spent):
        if name in plan.scored and "error" not in spent[name]:
            spent[name].update(do_probes(cell.data, cell.folder(name)))
    return spent


def run_sweep(cells: list[Cell], plan: Sweep, jobs: int, label: str) -> dict[tuple[str, int, str], dict]:
    """Every trained run of every cell (longest first when ``cells`` say so), ``jobs`` side by side; the seconds spent
    and errors by (setting, toy seed, run)."""
    from tqdm.auto import tqdm

    def finished(cell: Cell, trained: str) -> bool:
        names = [trained, *(m for m, b in plan.bases.items() if b == trained)]
        return all((cell.folder(n) / "done.json").exists() and (n not in plan.scored or probe_numbers(cell.folder(n)) is not None)
                   for n in names)

    work = [(c, t) for c in cells for t in plan.trained]
    todo = [(c, t) for c, t in work if not finished(c, t)]
    print(f"{label}: {len(work)} trainings ({', '.join(plan.trained)}; erased copies: {', '.join(plan.bases) or 'none'}); "
          f"{len(work) - len(todo)} already probed, {len(todo)} to do with {jobs} jobs", flush=True)
    spent: dict = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_cell, c, plan, t): c for c, t in todo}
        for fut in tqdm(as_completed(futures), total=len(futures), desc="runs", unit="run", disable=not futures):
            cell = futures[fut]
            for name, value in fut.result().items():
                spent[(cell.setting, cell.toy_seed, name)] = value
                if "error" in value:
                    print(f"{cell.setting} / seed {cell.toy_seed} / {name}: {value['error']}", file=sys.stderr, flush=True)
    return spent


def collect(settings: list[str], cells: dict[str, list[Cell]], plan: Sweep, spent: dict, raw: dict | None = None) -> tuple[list, list]:
    """The scored rows (one per setting and method, with every seed's numbers) and the ablations' rows."""
    rows, ablations = [], []
    for name in settings:
        base = {"setting": name, "raw_bg": statistics.fmean(raw[name]) if raw and raw.get(name) else None}
        abl_seeds, method_seeds = [], {m: [] for m in plan.methods}
        for cell in cells[name]:
            abl = probe_numbers(cell.folder(plan.ablation[0]))
            abl_seeds.append({"toy_seed": cell.toy_seed, "train_seed": cell.train_seed, "numbers": abl,
                              "run": str(cell.folder(plan.ablation[0])), **spent.get((name, cell.toy_seed, plan.ablation[0]), {}),
                              "commands": run_commands(cell.data, cell.folder(plan.ablation[0]), cell.steps, cell.train_seed,
                                                       (*cell.extra, *plan.ablation[1]))})
            for m, flags in plan.methods.items():
                run = cell.folder(m)
                numbers = probe_numbers(run)
                twin = cell.folder(plan.bases[m]) if m in plan.bases else None
                seed_row = {"toy_seed": cell.toy_seed, "train_seed": cell.train_seed, "numbers": numbers, "run": str(run),
                            "complete_erasers": sorted(complete_erasers(run)), **spent.get((name, cell.toy_seed, m), {}),
                            "commands": run_commands(cell.data, run, cell.steps, cell.train_seed, (*cell.extra, *flags), twin)}
                if numbers is not None and abl is not None:
                    seed_row["score"] = score(numbers, abl, frozenset(seed_row["complete_erasers"]), erases(flags))
                method_seeds[m].append(seed_row)
        abl_done = [s for s in abl_seeds if s["numbers"]]
        abl_summary = {"seeds": len(abl_done), "of": len(abl_seeds), **({"numbers": number_stats(abl_done)} if abl_done else {})}
        ablations.append({**base, "method": plan.ablation[0], "flags": list(plan.ablation[1]), "summary": abl_summary, "seeds": abl_seeds})
        for m, flags in plan.methods.items():
            complete = sorted(set().union(*(s["complete_erasers"] for s in method_seeds[m])))
            rows.append({**base, "method": m, "flags": list(flags), "complete_erasers": complete,
                         "summary": summarise(method_seeds[m]), "seeds": method_seeds[m]})
    return rows, ablations


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
    ap.add_argument("--seeds", metavar="PAIRS", help="TOY:TRAIN seed pairs, comma-separated (default: "
                                                     + ",".join(f"{t}:{s}" for t, s in SEEDS) + ")")
    ap.add_argument("--steps", type=int, metavar="N",
                    help=f"d3s train --iters of every run (default: {DEFAULT_STEPS}; --quick: {QUICK_STEPS})")
    ap.add_argument("--jobs", type=int, default=2, metavar="N", help="runs side by side, one thread each (default: %(default)s)")
    ap.add_argument("--no-train", action="store_true",
                    help="train and probe nothing: score the runs already probed (a row's seeds column says how many)")
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

    plan = sweep(args.methods, args.common)
    settings = pick_rows(args.rows)
    seeds = parse_seeds(args.seeds)
    steps = args.steps if args.steps is not None else (QUICK_STEPS if args.quick else DEFAULT_STEPS)
    if steps < 1:
        raise GridError(f"--steps must be at least 1, got {steps}.")
    if not 1 <= args.jobs <= 64:
        raise GridError(f"--jobs must be in 1..64, got {args.jobs}.")
    out = Path(args.out)
    toys_dir, runs_dir = out / ("toys-quick" if args.quick else "toys"), out / ("runs-quick" if args.quick else "runs")
    t0 = time.time()

    toys = {(s.name, t): ensure_toy(s, args.quick, toys_dir, t, make=not args.no_train)
            for s, (t, _) in tqdm([(s, p) for s in settings for p in seeds], desc="toys", unit="toy", disable=len(settings) * len(seeds) < 2)}
    cells = {s.name: [Cell(s.name, t, r, Path(toys[(s.name, t)]["folder"]), steps, runs_dir) for t, r in seeds] for s in settings}
    order = sorted((c for cs in cells.values() for c in cs), key=lambda c: -toys[(c.setting, c.toy_seed)]["toy"]["train_per_pair"])
    spent = {} if args.no_train else run_sweep(order, plan, args.jobs,
                                               f"{len(settings)} settings x {len(seeds)} seeds, {steps} steps; runs in {runs_dir}")
    raw = {s.name: [toys[(s.name, t)]["raw"]["bg_first"] for t, _ in seeds if toys[(s.name, t)]["raw"]] for s in settings}
    rows, ablations = collect([s.name for s in settings], cells, plan, spent, raw)

    text, last = format_text(rows), worst_line(rows)
    print(text)
    print(last)
    size = QUICK if args.quick else PAPER
    header = (f"# Disentanglement grid: {', '.join(plan.methods)} against the ablation (`--critic-weight 0 --no-erase`"
              f"{', every run with ' + shlex.join(plan.common) if plan.common else ''})\n\n"
              f"Toys {size['dim']}-d, {size['fg_classes']} fg x {size['bg_classes']} bg, {VAL_PER_PAIR} validation rows per pair; "
              f"{steps} steps; seeds (toy:training) {', '.join(f'{t}:{r}' for t, r in seeds)}. Every number is held out: probes "
              f"cross-fitted on the validation split (2 folds), rows no encoder, critic or eraser was fitted on; mean±sd over "
              f"seeds, fractions of the ablation's excess at the worst seed. Targets: ff within {FF_WITHIN} of the ablation's "
              f"(and >= {FF_FLOOR} where it reaches {FF_FLOOR}); bb >= {BB_MIN}; each linear cross excess <= {LIN_FRACTION} of "
              f"the ablation's (<= {ERASE_EXCESS} where LEACE's eraser of its part is complete); each skeptic (best of linear, "
              f"MLP, kernel) cross excess <= {SKEPTIC_FRACTION} of the ablation's; a probe with under {NOTHING_TO_REMOVE} to "
              f"remove is not judged; PASS when a target holds on every seed. first rule: both linear cross probes within "
              f"{ERASE_EXCESS} of chance for an erasing method (the erasure target as first written). raw bg: a linear bg probe "
              f"on the toy's raw first features.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.md").write_text(format_markdown(rows, ablations, header))
    result = {"steps": steps, "quick": args.quick, "size": size, "seeds": [list(p) for p in seeds],
              "methods": {m: list(f) for m, f in plan.methods.items()}, "common": list(plan.common), "ablation": list(plan.ablation[1]),
              "targets": {"ff_within": FF_WITHIN, "ff_floor": FF_FLOOR, "bb_min": BB_MIN, "lin_fraction": LIN_FRACTION,
                          "erase_excess": ERASE_EXCESS, "skeptic_fraction": SKEPTIC_FRACTION, "nothing_to_remove": NOTHING_TO_REMOVE},
              "settings": [toys[(s.name, t)] for s in settings for t, _ in seeds], "rows": rows, "ablations": ablations,
              "worst": (worst(rows) or {}).get("setting"), "worst_line": last, "seconds": round(time.time() - t0, 1)}
    (out / "grid.json").write_text(json.dumps(_finite(result), indent=2) + "\n")
    print(f"wrote {out / 'grid.json'} and {out / 'grid.md'} ({time.time() - t0:.0f} s)", file=sys.stderr)
    missing = any(r["summary"].get("seeds", 0) < r["summary"].get("of", 0) for r in rows + ablations)
    return 1 if missing or any("error" in v for v in spent.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
