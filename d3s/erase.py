"""``d3s erase``: linear concept erasure with a guarantee (LEACE) on a trained extractor's two feature parts.

The Wasserstein critics push the bg label out of z_fg and the fg label out of z_bg, but nothing proves they
succeeded: a linear probe often still reads some of it (``d3s probe``). LEACE (Belrose et al., *LEACE:
Perfect linear concept erasure in closed form*, NeurIPS 2023, https://arxiv.org/abs/2306.03819; EleutherAI's
``concept-erasure`` package, ``LeaceFitter`` / ``LeaceEraser`` in ``concept_erasure/leace.py``) gives, in
closed form, the affine map ``x -> P x + (I - P) mu`` after which x and the concept's one-hot vector have zero
cross-covariance (every class has the same mean of x) on the data it is fitted on, so that no linear classifier
predicts the concept better than a constant there (for any convex loss), while changing x as little as possible
in expected squared distance ``E ||x' - x||^2_M``, for every norm of the paper's broad class (``M`` positive
semi-definite) at once. ``P`` is a perturbation of the identity of rank at most ``k - 1`` for ``k`` classes.
The package's defaults are kept: shrinkage of the covariance estimate (the zero cross-covariance holds for any
invertible estimate), singular values under ``svd_tol`` = 0.01 left alone, the trace constraint.

Two erasers are fitted on one split (``train`` by default) of a dataset, from the model's own features:

- on z_fg, of the bg label (one-hot over the model's bg classes);
- on z_bg, of the fg label (one-hot over its fg classes).

They are stored in the checkpoint (:class:`d3s.models.LeaceProjection` buffers in ``model.safetensors``, their
ranks and labels in ``config.json``) and applied in the model's ``forward``, so every user of the extractor
(``features()``, both heads, ``d3s probe``, ``d3s features``, ``d3s spurious``, the app's Predict tab, publishing)
reads the erased features.

The guarantee is about linear readers **on the fitted split**; a probe fitted there reads chance by construction,
so the report measures elsewhere: the heads, and the two leakage probes (bg from z_fg, fg from z_bg), before and
after erasure, cross-fitted on the evaluation split (:mod:`d3s.probes`), rows the erasers never saw. There the class
means differ by what the fit's estimate of them missed, which shrinks with the rows per class and vanishes where each
object is seen on every background (``benchmarks/erasure_rows.py``); the report warns when a held-out probe still
reads an erased label, and a nonlinear probe (``mlp``, ``kernel``) can read what LEACE leaves anyway.

With many classes and few features the class means may span all of a part, and equalising them leaves it constant
(20 fg classes over an 8-feature z_bg: the bg head fell from 0.95 to chance). ``--parts auto`` (the default) fits both
erasers and leaves out one that costs its own part's head more than 0.05 of accuracy on the fitted split, saying so
in the report; at the paper's sizes (1000 fg classes over 250 z_bg features) the package erased 92 directions and the
bg head kept 1.00, so both stay. ``both`` keeps both whatever they cost.

::

    d3s erase --checkpoint out/run --data out/toy              # in place; erasure.json beside it
    d3s train --data out/toy --out out/run ...                  # the same, at the end of the run (the default)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from .choices import ERASE_PARTS, PROBE_FOLDS

PACKAGE = "concept-erasure"
PAPER = "Belrose et al., LEACE: Perfect linear concept erasure in closed form (NeurIPS 2023), arXiv:2306.03819"
REPORT = "erasure.json"
HELD_OUT_SLACK = 0.02  # a complete eraser's held-out linear probe more than this over chance: the guarantee did not carry
PARTS = {"auto": ("z_fg", "z_bg"), "both": ("z_fg", "z_bg"), "z_fg": ("z_fg",), "z_bg": ("z_bg",)}  # --parts: which get an eraser
assert tuple(PARTS) == ERASE_PARTS  # the command line's choices
AUTO_HEAD_DROP = 0.05  # --parts auto: an eraser that costs its own part's head more than this (train accuracy) is left out


class EraseError(ValueError):
    """A checkpoint or split that erasers cannot be fitted on, or an output folder that cannot take them."""


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(PACKAGE)
    except PackageNotFoundError:
        raise EraseError(f"the {PACKAGE} package is not installed; `pip install {PACKAGE}==0.2.4` (see requirements.txt).") from None


def fit_eraser(x: torch.Tensor, labels: torch.Tensor, num_classes: int, batch_size: int = 4096, desc: str = "LEACE",
               progress: bool = True):
    """A ``concept_erasure.LeaceEraser`` of the class ``labels`` from the rows ``x``.

    Streams the rows into ``concept_erasure.LeaceFitter`` (float64 statistics; the package's defaults: affine,
    shrinkage of the covariance, ``svd_tol`` 0.01, trace constraint), the labels one-hot over ``num_classes``:
    a categorical concept is its indicator vector, not its index.

    Args:
        x (`torch.Tensor`): (N, D) features.
        labels (`torch.Tensor`): (N,) class indices in ``[0, num_classes)``.
        num_classes (`int`): number of classes of the concept.
        batch_size (`int`, defaults to 4096): rows per ``LeaceFitter.update``.
    """
    from concept_erasure import LeaceFitter
    from tqdm.auto import tqdm

    if len(x) < 2:
        raise EraseError(f"LEACE needs at least 2 rows to estimate covariances, got {len(x)}.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise EraseError(f"labels must be class indices in [0, {num_classes}), got values from {int(labels.min())} to {int(labels.max())}.")
    fitter = LeaceFitter(x.shape[1], num_classes, dtype=torch.float64)
    for rows in tqdm(torch.arange(len(x)).split(batch_size), desc=desc, leave=False, disable=not progress):
        fitter.update(x[rows].double(), F.one_hot(labels[rows].long(), num_classes).double())
    return fitter.eraser


def cross_covariance(x: torch.Tensor, labels: torch.Tensor, num_classes: int) -> float:
    """Largest absolute entry of the cross-covariance of ``x`` and the one-hot labels: 0 when every class has the
    same mean of x (what LEACE makes true on the rows it is fitted on)."""
    xc = x.double() - x.double().mean(0)
    z = F.one_hot(labels.long(), num_classes).double()
    return float((xc.T @ (z - z.mean(0))).abs().max() / max(1, len(x) - 1))


def _erased(model, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        device = model.fg_head.weight.device
        z = model.erase(torch.cat([feats["z_fg"], feats["z_bg"]], dim=1).to(device)).cpu()
    z_fg, z_bg = model.split(z)
    return {**feats, "z_fg": z_fg, "z_bg": z_bg}


@torch.no_grad()
def _head_accuracy(model, feats: dict[str, torch.Tensor]) -> dict[str, float]:
    device = model.fg_head.weight.device
    fg = (model.fg_head(feats["z_fg"].to(device)).argmax(1).cpu() == feats["fg"]).float().mean().item()
    keep = feats["bg"] >= 0
    bg = (model.bg_head(feats["z_bg"][keep].to(device)).argmax(1).cpu() == feats["bg"][keep]).float().mean().item() if keep.any() else None
    return {"fg_head": round(fg, 4), "bg_head": None if bg is None else round(bg, 4)}


def check_split(data: str, split: str) -> None:
    """Refuse a split without bg labels (ImageNet-like, fg only): erasers need both labels of every row."""
    from .data import label_info, load_split

    info = label_info(load_split(data, split, need_bg=False), f"{data} ({split})", need_bg=False)
    if info.bg_names is None:
        raise EraseError(f"{data} ({split}) has no 'bg' labels: LEACE erases bg from z_fg and fg from z_bg, so every row it is "
                         "fitted on needs both; give a split with fg and bg columns (e.g. --split train of a D3S or toy dataset).")


def erase_model(model, data: str, split: str = "train", kinds: tuple[str, ...] = ("linear",), eval_split: str = "validation",
                batch_size: int = 256, device: str | None = None, also=(), progress: bool = True, parts: str = "auto",
                folds: int = PROBE_FOLDS) -> dict:
    """Fit the two erasers on ``split`` of ``data`` and store them in ``model`` (and in each model of ``also``, e.g. the
    frozen-features checkpoint an image extractor was joined from); returns the report (``erasure.json``).

    Erasers the model already holds are replaced: the new ones are fitted on its un-erased features. When
    ``data`` has ``eval_split``, the report has the heads' accuracy and the two leakage probes of each of ``kinds``
    (``d3s.probes``, cross-fitted on ``eval_split``: rows the erasers never saw) before and after erasure there, with a
    warning where a held-out probe still reads what a complete eraser erased.

    Args:
        model: a :class:`~d3s.models.DisentangledExtractor` or :class:`~d3s.models.FeatureDisentangler` that reads ``data``.
        data (`str`): dataset folder or Hub id with fg and bg labels.
        split (`str`, defaults to ``"train"``): the split the erasers are fitted on (every row needs both labels).
        kinds (`tuple[str]`, defaults to linear): probe kinds run before and after; () for none.
        eval_split (`str`, defaults to ``"validation"``): where heads and probes are scored, if the data has it.
        also (`Sequence`): more models with the same z to store the same erasers in.
        parts (`str`, defaults to ``"auto"``): ``auto`` (both, less an eraser that costs its own part's head more
            than ``AUTO_HEAD_DROP`` of accuracy on ``split``), ``both``, ``z_fg`` (bg erased from z_fg only) or
            ``z_bg`` (fg from z_bg only): a part without an eraser keeps all it has (a rank-0 eraser).
    """
    from .data import load_split
    from .dataset import DatasetFormatError
    from .probes import CROSS, FitRows, run_probes, split_features

    version = package_version()
    if parts not in PARTS:
        raise EraseError(f"unknown --parts {parts!r}; choose from {', '.join(PARTS)}.")
    check_split(data, split)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.set_erasers(None, None)  # fit on the model's own z, not on what earlier erasers left
    for other in also:
        other.set_erasers(None, None)
    train = split_features(model, data, split, batch_size, device, progress=progress)
    if (train["bg"] < 0).any():
        raise EraseError(f"{data} ({split}) has rows without a bg label; LEACE needs both labels of every row it is fitted on.")
    n_fg, n_bg = len(model.fg_names), len(model.bg_names)
    fg_eraser = fit_eraser(train["z_fg"], train["bg"], n_bg, desc="LEACE: bg from z_fg", progress=progress) if "z_fg" in PARTS[parts] else None
    bg_eraser = fit_eraser(train["z_bg"], train["fg"], n_fg, desc="LEACE: fg from z_bg", progress=progress) if "z_bg" in PARTS[parts] else None
    record = {"method": "leace", "split": split, "rows": len(train["fg"])}
    per_class = {label: int(torch.bincount(train[label], minlength=n).min()) for label, n in (("fg", n_fg), ("bg", n_bg))}
    left_out, after_train = [], None  # after_train: the train features under the erasers kept, once known
    if parts == "auto":  # leave out an eraser that would take its part's own head with it
        model.set_erasers(fg_eraser, bg_eraser, record)
        ranks = {p: model.erasure[p]["rank"] for p in ("z_fg", "z_bg")}
        after_train = _erased(model, train)
        before, after = _head_accuracy(model, train), _head_accuracy(model, after_train)
        for part, head, label in (("z_fg", "fg_head", "bg"), ("z_bg", "bg_head", "fg")):
            if before[head] is not None and before[head] - after[head] > AUTO_HEAD_DROP:
                left_out.append(f"{part}: {label} not erased: its eraser (rank {ranks[part]} of {model.fg_dim if part == 'z_fg' else model.bg_dim}) "
                                f"took the {head.replace('_', ' ')} from {before[head]:.3f} to {after[head]:.3f} on {split} "
                                f"(--parts auto leaves out an eraser that costs its part's head more than {AUTO_HEAD_DROP}; --parts both keeps it)")
                fg_eraser, bg_eraser = (None, bg_eraser) if part == "z_fg" else (fg_eraser, None)
                after_train = None  # fitted with an eraser now left out
    for m in (model, *also):
        m.set_erasers(fg_eraser, bg_eraser, record)
    if after_train is None:
        after_train = _erased(model, train)
    report = {
        "method": "leace", "package": f"{PACKAGE} {version}", "paper": PAPER, "data": data, "split": split, "rows": len(train["fg"]),
        "fg_classes": n_fg, "bg_classes": n_bg, "rows_per_class": per_class, "parts": parts,
        **{part: {**((model.erasure or {}).get(part) or {"erases": None, "rank": 0}), "dim": dim}  # none: auto left both out
           for part, dim in (("z_fg", model.fg_dim), ("z_bg", model.bg_dim))},
        "cross_covariance": {  # on the fitted split, where LEACE makes these 0 (up to float error) by construction
            "bg_in_z_fg": {"before": cross_covariance(train["z_fg"], train["bg"], n_bg), "after": cross_covariance(after_train["z_fg"], train["bg"], n_bg)},
            "fg_in_z_bg": {"before": cross_covariance(train["z_bg"], train["fg"], n_fg), "after": cross_covariance(after_train["z_bg"], train["fg"], n_fg)},
        },
        "eval_split": None,
    }
    if left_out:
        report["left_out"] = left_out
    full = [p for p in ("z_fg", "z_bg") if report[p]["erases"] and report[p]["rank"] == report[p]["dim"]]
    if full:  # P = 0: the class means span the whole part, and equal means leave it constant
        report["warnings"] = [f"the {p} eraser has rank {report[p]['rank']}, all of {p}: the {report[p]['erases']} class means span it, "
                              f"so the erased {p} is constant (its head answers one class); --parts "
                              f"{'z_fg' if p == 'z_bg' else 'z_bg'} leaves it as it is" for p in full]
    try:
        load_split(data, eval_split, need_bg=False)
    except DatasetFormatError:
        report["warnings"] = [*report.get("warnings", []), f"{data} has no {eval_split} split: the erasers' guarantee is shown on "
                              f"the rows they were fitted on only, where it holds by construction; give an --eval-split of rows "
                              "they never saw to measure it"]
        return report
    model.set_erasers(None, None)
    val = split_features(model, data, eval_split, batch_size, device, need_bg=False, progress=progress)
    model.set_erasers(fg_eraser, bg_eraser, record)
    after_val = _erased(model, val)
    report["eval_split"] = eval_split
    report["heads"] = {"before": _head_accuracy(model, val), "after": _head_accuracy(model, after_val)}
    if kinds and bool((val["bg"] >= 0).any()):
        rows = FitRows(folds=folds)
        report["probes"] = {"before": run_probes({eval_split: val}, rows, kinds=kinds, names=CROSS, device=device),
                            "after": run_probes({eval_split: after_val}, rows, kinds=kinds, names=CROSS, device=device)}
        report["warnings"] = [*report.get("warnings", []), *held_out_warnings(report)]
        if not report["warnings"]:
            del report["warnings"]
    return report


def held_out_warnings(report: dict) -> list[str]:
    """A warning for each complete eraser whose label a held-out linear probe still reads (more than
    :data:`HELD_OUT_SLACK` over chance): the guarantee held on the fitted rows, not beyond them."""
    probes = (report.get("probes") or {}).get("after", {}).get("linear")
    if not probes:
        return []
    split, out = report["eval_split"], []
    for part, name, label, classes in (("z_fg", "bg_from_fg", "bg", report["bg_classes"]), ("z_bg", "fg_from_bg", "fg", report["fg_classes"])):
        e = report[part]
        if not e.get("erases") or e["rank"] < min(classes - 1, e["dim"]) or name not in probes.get(split, {}):
            continue
        read, chance = probes[split][name]["top1"], probes["chance"][label]
        if read > chance + HELD_OUT_SLACK:
            out.append(f"held out ({probes['fit'][split]['text']}), a linear probe still reads {label} from {part} at {read:.3f} "
                       f"(chance {chance:.3f}): the eraser, fitted on {report['rows_per_class'][label]} rows per {label} class for "
                       f"{e['dim']} features, equalises the class means of its own rows only. More rows per class, or paired "
                       "data (each object on every background: `d3s generate --paired`), carry it further")
    return out


def probe_kinds_of(spec: str) -> tuple[str, ...]:
    """``--probe`` of ``d3s erase`` (``--erase-probe`` of ``d3s train``) -> the probe kinds run before and after:
    what ``d3s probe --probe`` takes, or ``none``."""
    from .probes import ProbeError, probe_kinds

    if spec == "none":
        return ()
    try:
        return probe_kinds(spec)
    except ProbeError as err:
        raise EraseError(f"{err} (or none)") from None


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def write_model(model, folder: Path) -> None:
    """``save_pretrained`` into ``folder``, each file replaced atomically: written beside it, then renamed over it.
    ``config.json`` goes first: a reader between the two renames gets NaN erasers (or a size mismatch), never a
    model that silently lacks them (:class:`d3s.models.LeaceProjection`)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".erase-", dir=folder))
    try:
        model.save_pretrained(tmp)
        for name in ("config.json", "model.safetensors"):
            os.replace(tmp / name, folder / name)
        if not (folder / "README.md").exists() and (tmp / "README.md").exists():
            os.replace(tmp / "README.md", folder / "README.md")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_reports(folder: Path, report: dict) -> list[str]:
    """``erasure.json``; returns the names written. (Table 2's probes of the erased checkpoint are ``d3s probe``'s.)"""
    _write_json(folder / REPORT, report)
    return [REPORT]


def retire_stale(folder: Path, written: list[str]) -> dict[str, str]:
    """Rename the results measured before erasure (``probe.json``, ``spurious.json``) to ``*.before_erasure.json``: they
    no longer describe the checkpoint, and publishing would show them."""
    moved = {}
    for name in ("probe.json", "spurious.json"):
        if name not in written and (folder / name).exists():
            new = name.replace(".json", ".before_erasure.json")
            os.replace(folder / name, folder / new)
            moved[name] = new
    return moved


def erase(checkpoint: str, data: str, split: str = "train", out: str | None = None, kinds: tuple[str, ...] = ("linear",),
          eval_split: str = "validation", batch_size: int = 256, backbone: str | None = None, progress: bool = True,
          parts: str = "auto") -> dict:
    """``d3s erase``: fit the erasers for a checkpoint on ``split`` of ``data`` and write the checkpoint with them.

    Args:
        checkpoint (`str`): a ``d3s train --out`` folder (or Hub id, with ``out``).
        data (`str`): dataset the checkpoint reads (images, or the features of a frozen-features checkpoint).
        split (`str`, defaults to ``"train"``): the split the erasers are fitted on.
        out (`str`, *optional*): folder to write the erased checkpoint to; defaults to ``checkpoint`` itself (in
            place, each file replaced atomically). Elsewhere it must be new or empty.
        kinds (`tuple[str]`, defaults to linear): probe kinds before and after erasure, cross-fitted on ``eval_split``.
        backbone (`str`, *optional*): a frozen-features checkpoint on image data: the backbone that made its features.
        parts (`str`, defaults to ``"auto"``): which parts get an eraser (:func:`erase_model`).

    Writes ``config.json`` + ``model.safetensors`` (the erasers inside) and ``erasure.json`` (how they were fitted;
    heads and held-out leakage probes before and after). In place, a ``probe.json`` or ``spurious.json`` measured
    before erasure is renamed ``*.before_erasure.json``: they no longer describe the checkpoint (:func:`retire_stale`);
    ``d3s probe`` measures the erased checkpoint.
    """
    from .models import DisentangledExtractor, checkpoint_config, is_frozen, load_disentangler
    from .probes import load_for_data

    if parts not in PARTS:
        raise EraseError(f"unknown --parts {parts!r}; choose from {', '.join(PARTS)}.")
    config = checkpoint_config(checkpoint)
    if not isinstance(config.get("fg_names"), list) or not isinstance(config.get("bg_names"), list):
        raise EraseError(f"{checkpoint} has no fg and bg class names in its config.json (keys: {', '.join(sorted(config)) or 'none'}): "
                         "erasers are fitted for the labels of a d3s extractor; give a `d3s train --out` folder.")
    src = Path(checkpoint)
    target = Path(out) if out else src
    if not out and not src.is_dir():
        raise EraseError(f"{checkpoint} is not a local folder, so it cannot be written in place; give --out DIR for the erased copy.")
    if out and target.exists() and (not target.is_dir() or (any(target.iterdir()) and target.resolve() != src.resolve())):
        raise EraseError(f"--out {out} exists and is not an empty folder; give a new folder (or omit --out to write into {checkpoint}).")
    kinds = tuple(kinds)
    check_split(data, split)
    model = load_for_data(checkpoint, data, split, backbone)
    stored = model
    if is_frozen(config) and isinstance(model, DisentangledExtractor):  # joined to its backbone to read images
        stored = load_disentangler(checkpoint)
    report = erase_model(model, data, split, kinds, eval_split, batch_size, also=(stored,) if stored is not model else (),
                         progress=progress, parts=parts)
    write_model(stored.cpu(), target)
    report["written"] = write_reports(target, report)
    if target.resolve() == src.resolve():
        report["moved"] = retire_stale(target, report["written"])
    report["out"] = str(target)
    return report


def format_report(report: dict) -> str:
    """The report as a table: ranks, the fitted split's cross-covariances, heads and held-out probes before and after."""
    from .probes import fit_tag

    lines = [f"LEACE ({report['package']}) fitted on {report['rows']} rows of {report['data']} ({report['split']}):",
             "  " + "; ".join(f"{part} ({r['dim']}): " + (f"{r['erases']} erased, rank {r['rank']}" if r["erases"] else "not erased")
                              for part, r in ((p, report[p]) for p in ("z_fg", "z_bg")))]
    for name, cc in report["cross_covariance"].items():
        lines.append(f"  max |cross-covariance| {name} on {report['split']} (the fitted rows: 0 by construction): "
                     f"{cc['before']:.3g} -> {cc['after']:.3g}")
    lines += [f"  {w}" for w in report.get("left_out", [])]
    lines += [f"  warning: {w}" for w in report.get("warnings", [])]
    if not report.get("eval_split"):
        lines.append("  (no validation split: heads and probes not measured)")
        return "\n".join(lines)
    split = report["eval_split"]
    lines.append(f"{'':<24} {'before':>8} {'after':>8}   ({split})")
    for head in ("fg_head", "bg_head"):
        b, a = report["heads"]["before"][head], report["heads"]["after"][head]
        if b is not None:
            lines.append(f"{head + ' accuracy':<24} {b:8.3f} {a:8.3f}")
    for kind, before in (report.get("probes") or {}).get("before", {}).items():
        after = report["probes"]["after"][kind]
        for name, r in before.get(split, {}).items():
            c = before["chance"][name.split("_")[0]]
            lines.append(f"{kind + ' ' + name:<24} {r['top1']:8.3f} {after[split][name]['top1']:8.3f}   chance {c:.3f}; "
                         f"{fit_tag(after, split)}")
    return "\n".join(lines)
