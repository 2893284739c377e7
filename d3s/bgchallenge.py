"""The Backgrounds Challenge (Xiao et al., "Noise or Signal"; the paper's appendix G, Table 4).

The challenge's published layout (IN-9: 9 classes, 450 images per class in each variation)::

    DIR/<variation>/val/<class folder>/*.JPEG     variations: original, only_fg, no_fg, only_bg_b,
                                                  only_bg_t, mixed_same, mixed_rand, mixed_next
    DIR/fg_mask/val/<class folder>/<name>.npy     2-D 0/1 foreground mask of original/val/<class folder>/<name>.JPEG

with the class folders ``00_dog`` ... ``08_fish`` in IN-9 order. A run reads as the steps of
:func:`run_bgchallenge`:

1. check the layout and the model names before any image is decoded;
2. :func:`d3s.benchmark.run_models`: a model whose result matches this folder and these settings is
   skipped; the others are grouped by preprocessing. The work is cut into chunks (:mod:`d3s.chunks`):
   each variation's images (``chunk_size``) and the search's foregrounds (``search_chunk``); per group,
   each process decodes the images its share of the chunks reads once (a search chunk reads its
   foregrounds, their masks and every candidate background), shared by the group's models;
3. per model and chunk: a variation's top-5 predictions, or the adversarial search of the chunk's
   foregrounds (:func:`adversarial_search`), written as a chunk file; the main process merges them into
   the IN-9 accuracy on each variation, the BG-Gap (mixed_same - mixed_rand) and the adversarial-backgrounds
   accuracy, written to ``models/<model>.json``;
4. the table (``table.md``, ``table.csv``, ``summary.json``) and the plot, over every result there.

Under ``accelerate launch --num_processes N -m d3s bgchallenge ...`` the N processes share the chunks, and
their union is one process's run (the search's chunks are the same whatever N).

Predictions over the 1000 ImageNet classes map to IN-9 as the challenge maps them: the IN-9
superclass of the top-1 class (:func:`d3s.labels.imagenet_to_in9`); a top-1 class outside IN-9 counts as wrong.
A classifier with 9 outputs (``--in9-model``: trained on IN-9, as the challenge's IN-9L rows) answers in IN-9
directly, with the challenge's own preprocessing (IN-9's mean and std). The
challenge's images are 224 px centre crops that it feeds to its models as they are; here each model
gets them at its own input size, interpolation and normalisation, with no further crop, so a 224 px
model sees exactly the challenge's pixels.
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .benchmark import (ImageSet, ModelRun, Scoring, check_config, decode, on_device, precision_note, predict_top5,
                        resolve_device, run_models, summary_notes)
from .chunks import Chunk, Decoded
from .classifiers import IN9_KIND, D3S_PREFIX, ClassifierSpec, parse_model_list, resolve_classifiers, resolve_in9_classifier
from .guides import IMAGE_EXTENSIONS
from .labels import IN9_CLASSES, imagenet_to_in9
from .results import collect_results, csv_text, left_out_results, result_paths, write_atomic

VARIATIONS = ("original", "only_fg", "no_fg", "only_bg_b", "only_bg_t", "mixed_same", "mixed_rand", "mixed_next")
TITLES = {"original": "Original", "only_fg": "Only-FG", "no_fg": "No-FG", "only_bg_b": "Only-BG-B", "only_bg_t": "Only-BG-T",
          "mixed_same": "Mixed-Same", "mixed_rand": "Mixed-Rand", "mixed_next": "Mixed-Next", "bg_gap": "BG-Gap",
          "adversarial": "Adversarial"}
MASKS = "fg_mask"
CANDIDATES = "only_bg_t"  # the challenge's candidate backgrounds
ADVERSARIAL = "adversarial"  # the part of a run's chunks that are the search's foregrounds
CLASS_FOLDERS = tuple(f"{k:02d}_{name}" for k, name in enumerate(IN9_CLASSES))
SUBDIR = "bgchallenge"  # inside --out, beside `d3s benchmark`'s results
SUMMARY_JSON, TABLE_CSV, TABLE_MD, PLOT = "summary.json", "table.csv", "table.md", "accuracy.png"
COLUMNS = ("model", "family", "kind", *VARIATIONS, "bg_gap", "adversarial", "adversarial_n", "adversarial_se", "precision")
DEFAULT_MODELS = "resnet50.tv_in1k"  # the paper's and the challenge's baseline: PyTorch's ResNet-50 weights


class BgChallengeError(ValueError):
    """A folder not in the Backgrounds Challenge layout, or a bad setting; raised before any model runs."""


# --- 1. the layout ---------------------------------------------------------------------------------

def _norm(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _class_folders(folder: Path) -> list[Path]:
    """The 9 class folders of a ``<variation>/val`` folder, checked against IN-9's order."""
    found = sorted(p for p in folder.iterdir() if p.is_dir())
    if [_norm(p.name) for p in found] != [_norm(n) for n in CLASS_FOLDERS]:
        shown = ", ".join(p.name for p in found[:12]) or "none"
        raise BgChallengeError(f"{folder} has the class folders [{shown}]; expected the 9 IN-9 folders "
                               f"{', '.join(CLASS_FOLDERS)}, in that order.")
    return found


@dataclass
class Challenge:
    """A challenge folder, read and checked: each variation's images with IN-9 labels, and the masks searched."""

    root: Path
    variations: dict[str, ImageSet]
    files: dict[str, list[str]]  # per variation, each row's path relative to root
    masks: ImageSet | None = None  # the foregrounds of the adversarial search (None: no search)
    mask_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # their rows in `original`
    mask_population: dict[int, int] = field(default_factory=dict)  # masks per IN-9 class in the folder (sampled or not)
    fingerprint: dict = field(default_factory=dict)


def _digest(root: Path, files: list[Path]) -> str:
    return hashlib.sha1("|".join(f"{f.relative_to(root)}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:16]


def read_variation(folder: str | Path, name: str, root: str | Path | None = None) -> tuple[ImageSet, list[str]]:
    """One variation's ``val`` folder: an :class:`ImageSet` whose labels are IN-9 indices (0..8), and the files."""
    folder = Path(folder)
    root = Path(root) if root else folder
    files, labels = [], []
    for k, cls in enumerate(_class_folders(folder)):
        images = sorted(f for f in cls.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        files += images
        labels += [k] * len(images)
    if not files:
        raise BgChallengeError(f"{folder} holds no images; expected {folder}/<class folder>/*.JPEG.")
    paths = [str(f) for f in files]
    images = ImageSet(name, str(folder), np.asarray(labels, dtype=np.int64), lambda a, b: paths[a:b],
                      fingerprint={"rows": len(files), "content": _digest(root, files)})
    return images, [str(f.relative_to(root)) for f in files]


def _mask_png(path: str) -> bytes:
    """A mask as the challenge turns it into an image: 0/1 -> black/white (decoded like the images after)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((np.load(path, allow_pickle=False) > 0).astype(np.uint8) * 255).save(buf, "PNG")
    return buf.getvalue()


def stratified_sample(sizes: list[int], total: int | None, seed: int = 0) -> list[np.ndarray]:
    """Which items of each class a sample of ``total`` takes: per class, sorted indices into its items.

    The sample is stratified by class: ``total`` is shared out in proportion to the class sizes (largest remainders;
    equal remainders in an order drawn from ``seed``, so a sample smaller than the number of classes favours none),
    and each class's share is drawn without replacement by a generator seeded with ``(seed, class)``. ``total``
    None (or at least the sum of the sizes) takes everything.
    """
    n = sum(sizes)
    if total is None or total >= n:
        return [np.arange(size) for size in sizes]
    quotas = [total * size / n for size in sizes]
    shares = [int(q) for q in quotas]
    tie_break = np.random.default_rng([seed, len(sizes)]).permutation(len(sizes))
    for k in sorted(range(len(sizes)), key=lambda k: (-(quotas[k] - shares[k]), tie_break[k]))[: total - sum(shares)]:
        shares[k] += 1
    return [np.sort(np.random.default_rng([seed, k]).choice(size, share, replace=False))
            for k, (size, share) in enumerate(zip(sizes, shares))]


def stratified_standard_error(safe: np.ndarray, labels: np.ndarray, population: dict[int, int]) -> float:
    """Standard error of the adversarial accuracy of a class-stratified sample (finite-population corrected):
    sqrt(sum_h W_h^2 (1 - n_h/N_h) p_h (1 - p_h) / (n_h - 1)), W_h = N_h / N. Zero for a census."""
    total = sum(population.values())
    var = 0.0
    for k, size in population.items():
        hit = safe[labels == k]
        if len(hit) > 1 and len(hit) < size:
            p = float(hit.mean())
            var += (size / total) ** 2 * (1 - len(hit) / size) * p * (1 - p) / (len(hit) - 1)
    return float(np.sqrt(var))


def _read_masks(root: Path, original: ImageSet, original_files: list[str], limit: int | None,
                seed: int = 0) -> tuple[ImageSet, np.ndarray, dict[int, int]]:
    """``fg_mask/val``: each mask with the row of its image in ``original`` (all, or a sample of ``limit`` stratified by
    class, drawn from ``seed``: :func:`stratified_sample`), and the number of masks of each class."""
    from PIL import Image

    folder = root / MASKS / "val"
    row_of = {(int(lab), Path(f).stem): r for r, (lab, f) in enumerate(zip(original.fg, original_files))}
    paths, rows, digest = [], [], []
    per_class = [sorted(f for f in cls.iterdir() if f.suffix == ".npy") for cls in _class_folders(folder)]
    chosen = stratified_sample([len(files) for files in per_class], limit, seed)
    for k, (files, take) in enumerate(zip(per_class, chosen)):
        for m in (files[i] for i in take):
            row = row_of.get((k, m.stem))
            if row is None:
                raise BgChallengeError(f"mask {m} has no image original/val/{CLASS_FOLDERS[k]}/{m.stem}.JPEG.")
            try:
                shape = np.load(m, mmap_mode="r", allow_pickle=False).shape
            except ValueError as err:
                raise BgChallengeError(f"mask {m} is not a numpy array file: {err}") from None
            with Image.open(root / original_files[row]) as im:
                size = im.size[::-1]
            if shape != size:
                raise BgChallengeError(f"mask {m} is {shape}, its image {original_files[row]} is {size[0]}x{size[1]}: "
                                       "a mask must be a 2-D array of the image's height and width.")
            paths.append(str(m))
            rows.append(row)
            digest.append(m)
    if not paths:
        raise BgChallengeError(f"{folder} holds no masks; expected {folder}/<class folder>/<name>.npy.")
    masks = ImageSet(MASKS, str(folder), original.fg[rows], lambda a, b: [_mask_png(p) for p in paths[a:b]],
                     fingerprint={"rows": len(paths), "content": _digest(root, digest)})
    return masks, np.asarray(rows, dtype=np.int64), {k: len(files) for k, files in enumerate(per_class)}


def open_challenge(root: str | Path, adversarial_limit: int | None = None, adversarial_seed: int = 0,
                   variations: tuple[str, ...] = VARIATIONS) -> Challenge:
    """Read and check a challenge folder; ``adversarial_limit`` foregrounds searched in all, a sample stratified by class
    drawn from ``adversarial_seed`` (None: all, 0: no search); only ``variations`` are read (plus ``original`` and
    the candidate backgrounds when the search runs)."""
    root = Path(root)
    if not root.is_dir():
        raise BgChallengeError(f"--data {root} is not a folder; give the Backgrounds Challenge folder "
                               f"(with {', '.join(VARIATIONS)} and {MASKS}).")
    search = adversarial_limit != 0
    wanted = [v for v in VARIATIONS if v in variations or (search and v in ("original", CANDIDATES))]
    needed = wanted + ([MASKS] if search else [])
    missing = [v for v in needed if not (root / v / "val").is_dir()]
    if missing:
        raise BgChallengeError(f"{root} is not in the Backgrounds Challenge layout: {', '.join(f'{v}/val' for v in missing)} "
                               f"missing (expected DIR/<variation>/val/<class folder>/*.JPEG for {', '.join(VARIATIONS)}, "
                               f"and {MASKS}/val/<class folder>/*.npy).")
    images, files = {}, {}
    for v in wanted:
        images[v], files[v] = read_variation(root / v / "val", v, root)
    ch = Challenge(root, images, files)
    if adversarial_limit != 0:
        ch.masks, ch.mask_rows, ch.mask_population = _read_masks(root, images["original"], files["original"],
                                                                 adversarial_limit, adversarial_seed)
    ch.fingerprint = {"source": os.path.abspath(root), **{v: s.fingerprint for v, s in images.items()},
                      MASKS: ch.masks.fingerprint if ch.masks else None}
    return ch


def open_in9_val(path: str | Path) -> ImageSet:
    """IN-9's validation images: a challenge folder's ``original/val`` (or that folder given directly); another
    variation's folder (``mixed_rand``, ``only_fg``...) is refused, naming it."""
    p = Path(path)
    folder = next((f for f in (p / "original" / "val", p / "val") if f.is_dir()), p)
    if not folder.is_dir():
        raise BgChallengeError(f"--in9 {path} is not a folder; give the Backgrounds Challenge folder or its original/val.")
    variation = folder.resolve().parent.name if folder.name == "val" else folder.resolve().name
    if variation != "original":
        what = f"the challenge's {variation!r} variation" if variation in (*VARIATIONS, MASKS) else f"a folder named {variation!r}"
        raise BgChallengeError(f"--in9 {path} is {what}, not IN-9's original images; give the Backgrounds Challenge "
                               "folder or its original/val.")
    return read_variation(folder, "in9")[0]


# --- 2. IN-9 answers -------------------------------------------------------------------------------

def in9_of_imagenet() -> np.ndarray:
    """The challenge's rule as a table: ImageNet index -> its IN-9 superclass, or -1 (then the answer is wrong)."""
    table = np.full(1000, -1, dtype=np.int64)
    for index, k in imagenet_to_in9().items():
        table[index] = k
    return table


def _per_class(hit: np.ndarray, labels: np.ndarray) -> dict:
    return {IN9_CLASSES[k]: float(hit[labels == k].mean()) for k in sorted(set(labels.tolist()))}


def in9_accuracy(pred: np.ndarray, labels: np.ndarray) -> dict:
    hit = pred == labels
    return {"n": int(len(labels)), "top1": float(hit.mean()), "per_class": _per_class(hit, labels)}


# --- 3. adversarial backgrounds --------------------------------------------------------------------

def adversarial_search(logits_of: Callable, fgs: np.ndarray, alphas: np.ndarray, labels: np.ndarray, bgs: np.ndarray,
                       batch_size: int = 64, device="cpu", progress: bool = False, desc: str | None = None,
                       answers: np.ndarray | None = None) -> dict:
    """Which foregrounds some background turns into a wrong IN-9 answer (the challenge's adversarial backgrounds).

    Args:
        logits_of (`Callable`): the model, as :func:`d3s.benchmark.on_device` returns it.
        fgs (`np.ndarray`): the images ``(F, 3, H, W)`` uint8; alphas (`np.ndarray`): their masks ``(F, 1, H, W)``
            uint8 (0..255, decoded like the images); labels (`np.ndarray`): their IN-9 classes ``(F,)``.
        bgs (`np.ndarray`): the candidate backgrounds ``(B, 3, H, W)`` uint8.
        batch_size (`int`, defaults to 64): composites per forward pass (halved on out-of-memory).
        answers (`np.ndarray`, *optional*): the IN-9 class of each output (default: :func:`in9_of_imagenet`, for
            ImageNet-1k classifiers; ``np.arange(9)`` for a classifier of the 9 IN-9 classes).

    A composite is ``bg * (1 - a) + fg * a`` in float. Per foreground the search stops at the first
    background that fools the model. Foregrounds are searched ``batch_size`` at a time: each step every
    foreground of the pool tries its next ``batch_size // pool`` backgrounds, so batches stay full as
    foregrounds leave. Backgrounds are tried in order of how many foregrounds they have fooled so far:
    whether some background fools a foreground does not depend on the order; the cost does.

    Returns ``{"fooled_by": (F,) row of the first background that fooled it, or -1; "tried": (F,)
    backgrounds tried up to that one; "composites": how many were evaluated}``.
    """
    import torch
    from tqdm.auto import tqdm

    device = torch.device(device)
    fg_t, a_t, bg_t = (torch.as_tensor(np.ascontiguousarray(a)).to(device) for a in (fgs, alphas, bgs))
    lab_t = torch.as_tensor(labels).to(device)
    table = torch.as_tensor(in9_of_imagenet() if answers is None else answers).to(device)
    fooled_by, tried = np.full(len(fgs), -1, dtype=np.int64), np.zeros(len(fgs), dtype=np.int64)
    fooled = np.zeros(len(bgs), dtype=np.int64)  # per background: foregrounds it fooled
    pending, active = collections.deque(range(len(fgs))), {}  # active: foreground -> backgrounds still to try
    composites = 0
    bar = tqdm(total=len(fgs), unit="fg", desc=desc, disable=not progress)
    with torch.inference_mode():
        while pending or active:
            while pending and len(active) < batch_size:
                active[pending.popleft()] = np.argsort(-fooled, kind="stable")
            step = list(active.items())[:batch_size]
            k = max(1, batch_size // len(step))
            fi = np.concatenate([np.full(len(order[:k]), i) for i, order in step])
            bj = np.concatenate([order[:k] for _, order in step])
            try:
                fi_t, bj_t = torch.as_tensor(fi, device=device), torch.as_tensor(bj, device=device)
                a = a_t[fi_t].float() / 255
                x = bg_t[bj_t].float() * (1 - a) + fg_t[fi_t].float() * a
                wrong = (table[logits_of(x).argmax(dim=1)] != lab_t[fi_t]).cpu().numpy()
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size //= 2
                torch.cuda.empty_cache()
                continue
            composites += len(bj)
            start = 0
            for i, order in step:
                js = order[:k]
                w = wrong[start : start + len(js)]
                start += len(js)
                fooled[js[w]] += 1
                first = int(np.argmax(w)) if w.any() else -1
                tried[i] += first + 1 if first >= 0 else len(js)
                if first >= 0 or len(order) == len(js):  # fooled, or every background tried: done
                    fooled_by[i] = js[first] if first >= 0 else -1
                    del active[i]
                    bar.update(1)
                else:
                    active[i] = order[len(js) :]
    bar.close()
    return {"fooled_by": fooled_by, "tried": tried, "composites": int(composites)}


# --- 4. a model's result ---------------------------------------------------------------------------

@dataclass
class BgChallengeConfig(ModelRun):
    """Settings of a Backgrounds Challenge run, and those of :class:`d3s.benchmark.ModelRun`.

    Args:
        data (`str`): the challenge folder (see the module docstring).
        out (`str`): results folder; results go to ``out/bgchallenge/`` (beside `d3s benchmark`'s), reused on reruns.
        models (`str` or `list`, defaults to ``"resnet50.tv_in1k"``): names of the benchmark registry
            (timm, ``clip:<arch>/<pretrained>``, ``d3s:<checkpoint>``), comma-separated; empty for none.
        checkpoints (`list[str]`): d3s extractors (``d3s train --out`` folders or Hub ids), evaluated through their fg head.
        adversarial_limit (`int`, *optional*): foregrounds searched for adversarial backgrounds, in all (default: all
            4,050; 0 skips the search, the costly part). A limit draws a sample stratified by class (each class in
            proportion to its masks) from ``adversarial_seed``; the score is then an estimate, recorded with its
            standard error and the list of foregrounds searched.
        adversarial_seed (`int`, defaults to 0): the seed of that sample.
        variations (`tuple[str]`, defaults to all eight): the variations scored (the others show as ``-``).
        in9_models (`list[str]`): classifiers with 9 outputs, the IN-9 classes (timm names or ``local-dir:`` folders),
            scored directly in IN-9 with the challenge's preprocessing.
        search_chunk (`int`, defaults to 256): foregrounds per chunk of the adversarial search, the unit shared among
            processes. Each chunk orders the backgrounds anew (by how many of the chunk's foregrounds each has fooled), so
            it sets which fooling background is named and how many composites are tried, never whether a foreground is
            safe; recorded in the result.
    """

    data: str
    out: str
    models: str | list[str] = DEFAULT_MODELS
    checkpoints: list[str] = field(default_factory=list)
    adversarial_limit: int | None = None
    adversarial_seed: int = 0
    variations: tuple[str, ...] = VARIATIONS
    in9_models: list[str] = field(default_factory=list)
    search_chunk: int = 256


def score_chunk(spec: ClassifierSpec, clf, chunk: Chunk, decoded: Decoded, ch: Challenge, c: BgChallengeConfig,
                device) -> dict[str, np.ndarray]:
    """One chunk through a built model: a variation's images -> their top-5 predictions; the search's foregrounds
    (part ``adversarial``) -> :func:`adversarial_search` over every candidate background."""
    table = _answers(spec)
    if chunk.part != ADVERSARIAL:
        images = decoded.take(chunk.part, np.arange(chunk.start, chunk.stop))
        return {"top5": predict_top5(clf.model, spec.data_config, images, c.batch_size, device, precision=c.precision)}
    fgs = decoded.take("original", ch.mask_rows[chunk.start:chunk.stop])
    alphas = decoded.take(MASKS, np.arange(chunk.start, chunk.stop))[:, :1]
    bgs = decoded.take(CANDIDATES, np.arange(len(ch.variations[CANDIDATES])))
    found = adversarial_search(on_device(clf.model, spec.data_config, device, c.precision), fgs, alphas,
                               ch.masks.fg[chunk.start:chunk.stop], bgs, c.batch_size, device, answers=table)
    return {"fooled_by": found["fooled_by"], "tried": found["tried"], "composites": np.asarray([found["composites"]])}


def _answers(spec: ClassifierSpec) -> np.ndarray:
    """Each output's IN-9 class: itself for a classifier of the 9 classes, :func:`in9_of_imagenet` for ImageNet-1k."""
    return np.arange(len(IN9_CLASSES)) if spec.kind == IN9_KIND else in9_of_imagenet()


def model_result(spec: ClassifierSpec, outputs: dict, seconds: float, devices: str, ch: Challenge, data: dict,
                 c: BgChallengeConfig) -> dict:
    """A model's result record from every chunk's outputs: the accuracy on each variation, the BG-Gap, the adversarial
    accuracy. ``seconds`` (summed over processes) and ``devices`` are the run-time fields."""
    table = _answers(spec)
    variations = {v: in9_accuracy(table[outputs[v]["top5"][:, 0]], ch.variations[v].fg) for v in c.variations}
    adversarial = None
    if ch.masks is not None:
        found = outputs[ADVERSARIAL]
        rows, labels = ch.mask_rows, ch.masks.fg
        safe = found["fooled_by"] < 0
        bg_files = ch.files[CANDIDATES]
        sampled = int(len(rows)) < sum(ch.mask_population.values())
        adversarial = {
            "n": int(len(rows)), "accuracy": float(safe.mean()), "vulnerable": int((~safe).sum()),
            "sampled": sampled, "seed": c.adversarial_seed if sampled else None,
            "standard_error": stratified_standard_error(safe, labels, ch.mask_population),
            "candidates": len(bg_files), "composites": int(found["composites"].sum()), "search_chunk": c.search_chunk,
            "per_class": _per_class(safe, labels),
            "foregrounds": [{"image": ch.files["original"][r], "fooled_by": bg_files[j] if j >= 0 else None, "tried": int(t)}
                            for r, j, t in zip(rows.tolist(), found["fooled_by"].tolist(), found["tried"].tolist())],
        }
    return {"model": spec.name, "kind": spec.kind, "family": spec.family, "extra_data": spec.extra_data,
            "identity": spec.identity(), "data": data, "variations": variations,
            "bg_gap": (variations["mixed_same"]["top1"] - variations["mixed_rand"]["top1"]
                       if {"mixed_same", "mixed_rand"} <= set(variations) else None), "adversarial": adversarial,
            "seconds": round(seconds, 3), "device": devices, "precision": c.precision, "d3s_version": __version__}


def write_result(out: Path, result: dict) -> Path:
    path = result_paths(out, result["model"])[0]
    write_atomic(path, json.dumps(result, indent=1))
    return path


def describe(result: dict) -> str:
    v, adv = result["variations"], result["adversarial"]
    estimate = (f" +- {100 * adv['standard_error']:.1f} (a sample of {adv['n']} foregrounds, seed {adv['seed']})"
                if adv and adv.get("sampled") else "")
    tail = f", adversarial {100 * adv['accuracy']:.1f}%{estimate} ({adv['composites']} composites)" if adv else ""
    scored = ", ".join(f"{name} {100 * v[name]['top1']:.1f}%" for name in VARIATIONS if name in v)
    gap = "" if result["bg_gap"] is None else f", BG-Gap {100 * result['bg_gap']:.1f} points"
    return f"{result['model']}: {scored}{gap}{tail}"


# --- 5. the table and the plot ---------------------------------------------------------------------

def summary_row(result: dict) -> dict:
    adv = result["adversarial"]
    return {"model": result["model"], "family": result["family"], "kind": result["kind"],
            **{v: result["variations"][v]["top1"] if v in result["variations"] else None for v in VARIATIONS},
            "bg_gap": result["bg_gap"],
            "adversarial": adv["accuracy"] if adv else None, "adversarial_n": adv["n"] if adv else None,
            "adversarial_se": adv.get("standard_error") if adv and adv.get("sampled") else None,
            "precision": result.get("precision", "unrecorded")}


def markdown_table(rows: list[dict]) -> str:
    cols = [*VARIATIONS, "bg_gap", "adversarial"]
    lines = ["| Model | " + " | ".join(TITLES[c] for c in cols) + " | Precision |", "|---|" + "---:|" * len(cols) + "---|"]
    for r in rows:
        cells = ["-" if r[c] is None else f"{100 * r[c]:.1f}" for c in cols]
        if r.get("adversarial_se") is not None:  # a sample: an estimate, with its standard error
            cells[-1] += f" +- {100 * r['adversarial_se']:.1f}"
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['precision']} |")
    n = {r["adversarial_n"] for r in rows if r["adversarial_n"] is not None}
    lines += ["", "IN-9 accuracy (%) per variation: the model's top-1 ImageNet class mapped to its IN-9 class (a class "
                  "outside IN-9 is wrong). BG-Gap: Mixed-Same - Mixed-Rand (points). Adversarial: foregrounds that no "
                  f"{CANDIDATES} background fools (of {', '.join(map(str, sorted(n))) or 'no'} foregrounds)."]
    note = precision_note(rows)
    if note:
        lines += ["", f"Note: {note}."]
    return "\n".join(lines)


def write_summary(out: Path, data: dict, failed: list[dict]) -> dict:
    rows = [summary_row(r) for r in collect_results(out, data)]
    summary = {"d3s_version": __version__, "data": data, "models": rows, "failed": failed, "precision_note": precision_note(rows),
               "left_out": left_out_results(out, data, {"bgchallenge": "the challenge folder", "adversarial_limit": "--adversarial-limit",
                                                        "adversarial_seed": "--seed", "variations": "--variations"})}
    write_atomic(out / SUMMARY_JSON, json.dumps(summary, indent=1))
    write_atomic(out / TABLE_CSV, csv_text(rows, COLUMNS))
    write_atomic(out / TABLE_MD, markdown_table(rows) + "\n")
    return summary


def read_summary(results: str | Path) -> dict | None:
    """The challenge's summary in a results folder (``RESULTS/bgchallenge/summary.json``), or None."""
    try:
        return json.loads((Path(results) / SUBDIR / SUMMARY_JSON).read_text())
    except (OSError, ValueError):
        return None


# --- the run ---------------------------------------------------------------------------------------

def run_bgchallenge(c: BgChallengeConfig, specs: list[ClassifierSpec] | None = None, log: Callable[[str], None] = print) -> dict:
    """Evaluate the models (or the given ``specs``) on the challenge; write results, table and plot.

    Returns the summary dict with ``evaluated``, ``skipped`` and ``failed`` lists and ``out`` (the folder written).
    """
    # 1. inputs, all checked before any decoding (by every process, so a refusal never leaves one waiting)
    check_config(c)
    from .generate import distributed_state

    rank, _, _, process_device = distributed_state()
    log = log if rank == 0 else (lambda line: None)  # one process speaks
    if c.search_chunk < 1:
        raise BgChallengeError(f"search_chunk must be at least 1, got {c.search_chunk}.")
    if c.adversarial_limit is not None and c.adversarial_limit < 0:
        raise BgChallengeError(f"--adversarial-limit must be 0 (no search) or more, got {c.adversarial_limit}.")
    unknown = [v for v in c.variations if v not in VARIATIONS]
    if unknown or not c.variations:
        raise BgChallengeError(f"--variations takes names among {', '.join(VARIATIONS)}; got {', '.join(unknown) or 'none'}.")
    if specs is None:
        names = (parse_model_list(c.models) if c.models else []) + [D3S_PREFIX + p for p in c.checkpoints]
        if not names and not c.in9_models:
            raise BgChallengeError("No model given: pass --models (timm names, clip:<arch>/<pretrained>), --checkpoint "
                                   "and/or --in9-model.")
        specs = resolve_classifiers(names, pretrained=c.pretrained, prompts=c.clip_prompts, names=c.clip_names) if names else []
        specs += [resolve_in9_classifier(n, c.pretrained) for n in c.in9_models]
    specs = [replace(s, data_config={**s.data_config, "crop_pct": 1.0}) for s in specs]  # the images are crops already
    ch = open_challenge(c.data, c.adversarial_limit, c.adversarial_seed, tuple(c.variations))
    data = {"bgchallenge": ch.fingerprint, "adversarial_limit": c.adversarial_limit,
            "adversarial_seed": c.adversarial_seed if c.adversarial_limit else None,
            "variations": [v for v in VARIATIONS if v in c.variations]}
    out = Path(c.out) / SUBDIR
    out.mkdir(parents=True, exist_ok=True)
    device = process_device or resolve_device(c.device)  # under `accelerate launch`, each process's own GPU

    # 2-3. each process's chunks decoded once per preprocessing setting, scored by each model, merged by the main process
    images = {**ch.variations, **({MASKS: ch.masks} if ch.masks is not None else {})}
    parts = {v: (len(ch.variations[v]), c.chunk_size) for v in data["variations"]}
    if ch.masks is not None:
        parts[ADVERSARIAL] = (len(ch.masks), c.search_chunk)

    def needs(chunk: Chunk) -> dict[str, np.ndarray]:
        if chunk.part != ADVERSARIAL:
            return {chunk.part: np.arange(chunk.start, chunk.stop)}
        return {"original": ch.mask_rows[chunk.start:chunk.stop], MASKS: np.arange(chunk.start, chunk.stop),
                CANDIDATES: np.arange(len(ch.variations[CANDIDATES]))}

    scoring = Scoring(
        parts=parts, images=images, needs=needs,
        decode=lambda s, data_config, path: decode(s, data_config, path, c.workers, c.progress and rank == 0),
        score=lambda spec, clf, chunk, decoded: score_chunk(spec, clf, chunk, decoded, ch, c, device),
        merge=lambda spec, outputs, seconds, devices: model_result(spec, outputs, seconds, devices, ch, data, c),
        write=write_result, describe=describe)
    evaluated, skipped, failed = run_models(specs, out, data, scoring, device, log, c.cache_dir, c.precision, c.progress)
    if rank != 0:  # the main process writes the table
        return {"rank": rank, "evaluated": evaluated, "skipped": skipped, "failed": failed, "out": str(out)}

    # 4. table and plot over every result in the folder for this data
    summary = write_summary(out, data, failed)
    for note in summary_notes(summary):
        log(f"note: {note}")
    if c.plots and summary["models"]:
        from .plots import bgchallenge_bars

        summary["plot"] = bgchallenge_bars(summary["models"], out / PLOT, {c: TITLES[c] for c in (*VARIATIONS, "adversarial")})
    summary.update(evaluated=evaluated, skipped=skipped, out=str(out), rank=rank)
    return summary
