"""Benchmark pretrained classifiers on a D3S split against ImageNet val (paper section 4, appendix E).

A run reads as the steps of :func:`run_benchmark`:

1. check every input before any image is decoded: model names and label spaces
   (:func:`d3s.classifiers.resolve_classifiers`), the D3S split (present, non-empty, ImageNet-1k
   ``fg`` labels), the ImageNet reference;
2. plan: models whose result file already matches this data and these settings are skipped (a
   run over many models resumes where it stopped; a new model adds to the table); the rest are
   grouped by preprocessing setting (input size, interpolation, crop). The images are cut into
   fixed chunks (``--chunk-size``), the unit of work and of resuming (:mod:`d3s.chunks`);
3. per group: each process takes its share of the chunks some model still lacks (all of them when
   there is one process) and decodes and resizes their images once, into uint8 arrays shared by the
   group's models (normalisation, which differs between models, is done per model on the device);
4. per model and chunk: batched inference under ``torch.inference_mode`` (channels-last and bf16/fp16
   autocast on CUDA; the batch is halved on out-of-memory), the top-5 predictions written as a chunk
   file; after a barrier the main process merges each model's chunks into top-1/top-5 and the
   breakdowns, written as ``models/<model>.json`` and ``.csv``; a model that fails is reported, the rest go on;
5. the summary (``summary.json``, ``summary.csv``, ``per_background.csv``; ``flip_rates.csv`` for
   paired data) over every result in the folder for this data, and the plots (:mod:`d3s.plots`).

Under ``accelerate launch --num_processes N -m d3s benchmark ...`` the N processes share the chunks (each
on its own GPU) and their union is one process's run, file for file (but for ``seconds`` and ``device``).

On a split whose ``group`` column holds objects seen on several backgrounds (``d3s generate --paired``),
each model also gets the counterfactual scores of :mod:`d3s.counterfactual`: consistency,
all-backgrounds accuracy and the flip rate of each background.

The stages live beside this module: reading and decoding the images in :mod:`d3s.imagesets`, batched
inference in :mod:`d3s.inference`; this module plans, scores, writes the results and the summary.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .chunks import Chunk, Decoded, build_seeded
from .classifiers import ClassifierSpec, parse_model_list, resolve_classifiers
from .counterfactual import counterfactual_scores
from .dataset import DatasetFormatError, find_splits
from .results import (MODELS_DIR, collect_results, csv_text, left_out_results, load_result, model_slug,  # noqa: F401
                      result_paths, write_atomic)

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
PER_BACKGROUND_CSV = "per_background.csv"


# the stages this module runs, importable from here as before
from .imagesets import (BENCHMARK_SPLIT, BenchmarkError, ImageSet, decode, eval_transform, open_d3s,  # noqa: F401
                        open_image, open_reference)
from .inference import PrecisionError, autocast_dtype, on_device, predict_top5, resolve_device, run_batches  # noqa: F401


# --- 4b. scores and breakdowns ---------------------------------------------------------------------

def scores(top5: np.ndarray, labels: np.ndarray) -> dict:
    hit1 = top5[:, 0] == labels
    hit5 = (top5 == labels[:, None]).any(axis=1)
    return {"n": int(len(labels)), "top1": float(hit1.mean()), "top5": float(hit5.mean())}


def breakdowns(top5: np.ndarray, images: ImageSet) -> dict:
    """Per (fg, bg) cell, per background (worst named), per IN-9 superclass x background (figure 11)."""
    from .labels import IN9_CLASSES, imagenet_classes, imagenet_to_in9

    fg, bg, names = images.fg, images.bg, images.bg_names
    hit1 = top5[:, 0] == fg
    hit5 = (top5 == fg[:, None]).any(axis=1)
    classes = imagenet_classes()
    # the (fg, bg) cells in order, counted in one pass (not a pass over every row per cell: D3S has 10,000 cells)
    pairs, inverse = np.unique(np.stack([fg, bg], axis=1).reshape(-1, 2), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(pairs)).tolist()
    ones = np.bincount(inverse, weights=hit1, minlength=len(pairs)).tolist()
    fives = np.bincount(inverse, weights=hit5, minlength=len(pairs)).tolist()
    cells = []
    for (f, b), n, c1, c5 in zip(pairs.tolist(), sizes, ones, fives):
        cells.append({"fg": f, "fg_name": classes[f].name, "bg": b, "bg_name": names[b], "n": n,
                      "correct_top1": int(c1), "correct_top5": int(c5), "top1": c1 / n, "top5": c5 / n})
    per_bg = {}
    for b in sorted(set(bg.tolist())):
        m = bg == b
        per_bg[names[b]] = {"n": int(m.sum()), "top1": float(hit1[m].mean()), "top5": float(hit5[m].mean())}
    # ranked by top-1, then top-5; None when every background ties (e.g. a random model at 0%)
    rank = {k: (v["top1"], v["top5"]) for k, v in per_bg.items()}
    tied = len(set(rank.values())) == 1
    worst = None if tied else min(per_bg, key=lambda k: rank[k])
    best = None if tied else max(per_bg, key=lambda k: rank[k])

    in9 = imagenet_to_in9()
    sup = np.asarray([in9.get(f, -1) for f in fg.tolist()])
    per_in9, per_in9_bg, effects = {}, {}, []
    for k, sname in enumerate(IN9_CLASSES):
        m = sup == k
        if not m.any():
            continue
        base = float(hit1[m].mean())
        per_in9[sname] = {"n": int(m.sum()), "top1": base}
        per_in9_bg[sname] = {}
        for b in sorted(set(bg[m].tolist())):
            mb = m & (bg == b)
            acc = float(hit1[mb].mean())
            per_in9_bg[sname][names[b]] = {"n": int(mb.sum()), "top1": acc, "effect": acc - base}
            effects.append({"superclass": sname, "background": names[b], "n": int(mb.sum()), "top1": acc,
                            "superclass_top1": base, "effect": acc - base})
    effects.sort(key=lambda e: e["effect"])
    return {
        "worst_cells": worst_cells_with_samples(cells, top5, fg, bg),
        "per_background": per_bg,
        "worst_background": worst,
        "best_background": best,
        "per_in9": per_in9,
        "per_in9_background": per_in9_bg,
        "backgrounds_hurting_most": effects[:3],
        "backgrounds_helping_most": effects[::-1][:3],
        "per_cell": cells,
    }


WORST_CELLS = 24  # cells kept with sample rows in a result, for the app's Benchmark tab
SAMPLES_PER_CELL = 4


def worst_first(cells: list[dict]) -> list[dict]:
    """Cells ranked from the worst: lowest top-1, then top-5; larger cells first among ties."""
    return sorted(cells, key=lambda c: (c["top1"], c["top5"], -c["n"], c["fg"], c["bg"]))


def worst_cells_with_samples(cells: list[dict], top5: np.ndarray, fg: np.ndarray, bg: np.ndarray) -> list[dict]:
    """The lowest-accuracy (fg, bg) cells, each with a few rows (misclassified first) and their top-1 prediction.

    ``row`` indexes the benchmarked split as :func:`open_d3s` reads it, so :func:`worst_cell_samples`
    can show the images later.
    """
    from .labels import imagenet_classes

    classes = imagenet_classes()
    out = []
    for cell in worst_first(cells)[:WORST_CELLS]:
        rows = np.flatnonzero((fg == cell["fg"]) & (bg == cell["bg"]))
        wrong_first = rows[np.argsort(top5[rows, 0] == fg[rows], kind="stable")][:SAMPLES_PER_CELL]
        samples = [{"row": int(r), "pred": int(top5[r, 0]), "pred_name": classes[int(top5[r, 0])].name} for r in wrong_first]
        out.append({**cell, "samples": samples})
    return out


# --- results on disk (paths, slugs and atomic writes: d3s/results.py) ---------------------------------

CELL_COLUMNS = ("fg", "fg_name", "bg", "bg_name", "n", "correct_top1", "correct_top5", "top1", "top5")
SUMMARY_COLUMNS = ("model", "family", "extra_data", "d3s_top1", "d3s_top5", "imagenet_top1", "imagenet_top5",
                   "drop_top1", "drop_top5", "worst_background", "d3s_n", "imagenet_n", "filtered_by", "precision")
COUNTERFACTUAL_COLUMNS = ("consistency", "all_backgrounds_top1", "most_flips_background", "groups")
FLIP_RATES_CSV = "flip_rates.csv"


def write_result(out: str | Path, result: dict) -> tuple[Path, Path]:
    """``models/<slug>.json`` (everything) and ``models/<slug>.csv`` (the per-cell table)."""
    jpath, cpath = result_paths(out, result["model"])
    write_atomic(cpath, csv_text(result["d3s"]["per_cell"], CELL_COLUMNS))
    write_atomic(jpath, json.dumps(result, indent=1))  # last: its presence marks the model done
    return jpath, cpath


def worst_cell_samples(out: str | Path, name: str, cells: int = 8, decode: Callable = open_image,
                       may_open: Callable[[str], bool] = lambda source: True) -> dict:
    """A model's worst (fg, bg) cells with sample images, read back from the benchmarked split.

    Returns ``{"cells": [cell dicts], "gallery": [(PIL image, caption)], "note": str}``; the note says
    why there are no images (the data moved or changed, or the result predates sample rows). ``decode`` turns
    a stored image (bytes or path) into a PIL image, ``may_open(source)`` says whether the recorded data may be
    read at all (the app: local folders only, images from their bytes only). Notes are fixed sentences (the app shows
    them). Raises ``FileNotFoundError`` for a model without a result in ``out``, naming the models there.
    """
    result = load_result(out, name)
    if result is None:
        have = sorted(json.loads(p.read_text()).get("model", p.stem) for p in (Path(out) / MODELS_DIR).glob("*.json"))
        raise FileNotFoundError(f"No result for model {name!r} in {out}; results there: {', '.join(have) or 'none'}.")
    d = result["d3s"]
    if "worst_cells" not in d:  # a result from before sample rows were recorded: ranks only
        return {"cells": worst_first(d["per_cell"])[:cells], "gallery": [], "note": "This result has no sample rows; rerun the model to record them."}
    chosen = d["worst_cells"][:cells]
    source = result["data"]["d3s"]
    unavailable = {"cells": chosen, "gallery": []}
    if not may_open(source["source"]):
        return {**unavailable, "note": "Sample images are shown only for results on a local dataset folder."}
    try:
        images = open_d3s(source["source"], source["split"])
    except (BenchmarkError, DatasetFormatError):
        return {**unavailable, "note": "Sample images unavailable: the benchmarked dataset is no longer where it was."}
    if images.fingerprint != source:
        return {**unavailable, "note": "Sample images unavailable: the benchmarked dataset changed since this benchmark."}
    gallery = []
    for cell in chosen:
        for sample in cell["samples"]:
            (item,) = images.read(sample["row"], sample["row"] + 1)
            try:
                image = decode(item)
            except ValueError:  # an image the decoder refuses (stored as a path, too large)
                continue
            image.load()
            gallery.append((image, f"{cell['fg_name']} / {cell['bg_name']}: predicted {sample['pred_name']}"))
    return {"cells": chosen, "gallery": gallery, "note": ""}


def result_matches(result: dict | None, spec: ClassifierSpec, data: dict, precision: str) -> bool:
    """Whether a stored result can be reused: same data, same model identity, same precision."""
    return (bool(result) and result.get("data") == data and result.get("identity") == spec.identity()
            and result.get("precision") == precision)


def summary_row(result: dict) -> dict:
    d, im = result["d3s"], result.get("imagenet") or {}
    return {"model": result["model"], "family": result["family"], "extra_data": result["extra_data"],
            "kind": result["kind"], "d3s_top1": d["top1"], "d3s_top5": d["top5"], "imagenet_top1": im.get("top1"),
            "imagenet_top5": im.get("top5"), "drop_top1": result.get("drop_top1"), "drop_top5": result.get("drop_top5"),
            "worst_background": d["worst_background"], "d3s_n": d["n"], "imagenet_n": im.get("n"),
            "precision": result.get("precision", "unrecorded"),
            "per_background": {k: v["top1"] for k, v in d["per_background"].items()},
            **counterfactual_summary(d.get("counterfactual"))}


def counterfactual_summary(cf: dict | None) -> dict:
    """A model's counterfactual scores for the summary (nothing for unpaired data)."""
    if not cf:
        return {}
    return {"consistency": cf["consistency"], "all_backgrounds_top1": cf["all_backgrounds_top1"],
            "most_flips_background": cf["most_flips_background"], "groups": cf["groups"],
            "flip_rate": {k: v["flip_rate"] for k, v in cf["per_background"].items()}}


def benchmark_check(data: str | Path, split: str) -> dict:
    """How the scored images were checked: ``basis`` and ``filter_model`` (the zero-shot model whose ranks
    removed images, or None), from the ``split_report.json`` that ``d3s split`` leaves beside the data.

    A split filtered by a CLIP model favours CLIP models (the images they would get wrong were removed), so
    the summary marks their rows (:func:`filtered_by`).
    """
    from .curate import SPLIT_REPORT

    if split != BENCHMARK_SPLIT:
        return {"split": split, "basis": "unchecked", "filter_model": None}
    report_path = Path(data) / SPLIT_REPORT
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError):
        return {"split": split, "basis": "a check not recorded here (no split_report.json)", "filter_model": None}
    return {"split": split, "basis": report.get("basis", "?"), "filter_model": report.get("filter_model")}


def filtered_by(row_model: str, row_kind: str, check: dict | None) -> str | None:
    """The filter model when it favours this row's model: every CLIP row under a CLIP filter, and the filter model itself."""
    model = (check or {}).get("filter_model")
    if not model:
        return None
    clip_filter = model.startswith("clip:")
    return model if row_model == model or (clip_filter and row_kind == "clip") else None


def write_summary(out: str | Path, data: dict, failed: list[dict], bg_names: list[str], check: dict | None = None) -> dict:
    results = collect_results(out, data)
    rows = [summary_row(r) for r in results]
    for row in rows:
        row["filtered_by"] = filtered_by(row["model"], row["kind"], check)
    summary = {"d3s_version": __version__, "data": data, "check": check, "models": rows, "failed": failed, "backgrounds": bg_names,
               "per_in9_background": {r["model"]: r["d3s"]["per_in9_background"] for r in results},
               "precision_note": precision_note(rows),
               "left_out": left_out_results(out, data, {"d3s": "the D3S split", "imagenet": "the ImageNet reference"})}
    paired = [r for r in rows if "consistency" in r]
    write_atomic(Path(out) / SUMMARY_JSON, json.dumps(summary, indent=1))
    write_atomic(Path(out) / SUMMARY_CSV, csv_text(rows, SUMMARY_COLUMNS + (COUNTERFACTUAL_COLUMNS if paired else ())))
    bg_rows = [{"model": r["model"], **r["per_background"]} for r in rows]
    write_atomic(Path(out) / PER_BACKGROUND_CSV, csv_text(bg_rows, ["model", *bg_names]))
    if paired:
        flip_rows = [{"model": r["model"], **r["flip_rate"]} for r in paired]
        write_atomic(Path(out) / FLIP_RATES_CSV, csv_text(flip_rows, ["model", *bg_names]))
    return summary


def summary_notes(summary: dict) -> list[str]:
    """What a reader of a summary table must know: mixed precisions, and results in the folder it does not show."""
    notes = [summary["precision_note"]] if summary.get("precision_note") else []
    if summary.get("left_out"):
        notes.append("left out of this table, " + "; ".join(f"{r['model']} ({r['why']})" for r in summary["left_out"]))
    return notes


def precision_note(rows: list[dict]) -> str | None:
    """A sentence when a table's models were scored at different precisions (None when they agree)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["precision"]] = counts.get(r["precision"], 0) + 1
    if len(counts) < 2:
        return None
    return ("this table mixes precisions (" + ", ".join(f"{p}: {n} model(s)" for p, n in sorted(counts.items()))
            + "); rerun with one --precision to compare like with like")


# --- the run ---------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ModelRun:
    """Settings shared by runs over classifiers (`d3s benchmark`, `d3s bgchallenge`).

    Args:
        pretrained (`bool`, defaults to `True`): released weights; `False` = random weights, offline.
        clip_prompts (`str`, defaults to ``"single"``): ``single`` (``a photo of a {name}.``) or ``ensemble``.
        clip_names (`str`, defaults to ``"lemma"``): ``lemma``, ``definition`` or ``openai``.
        batch_size (`int`, defaults to 64), device (`str`, defaults to ``"auto"``), workers (`int`, defaults to 4):
            inference batch, torch device, decoding threads.
        cache_dir (`str`, *optional*): where decoded arrays are memory-mapped (a temporary folder, removed after).
        plots (`bool`, defaults to `True`): draw the plots after the run.
        progress (`bool`, defaults to `True`): progress bars.
        precision (`str`, defaults to ``"fp32"``): ``fp32`` (no autocast on any device: timm's ``validate.py`` and the
            Backgrounds Challenge score so), ``bf16`` or ``fp16`` (autocast). Recorded in every result; a stored
            result made at another precision is not reused.
        chunk_size (`int`, defaults to 512): images per chunk, the unit of work shared among processes under
            ``accelerate launch`` and the unit a killed run resumes from (:mod:`d3s.chunks`). Results do not depend on it.
    """

    pretrained: bool = True
    clip_prompts: str = "single"
    clip_names: str = "lemma"
    batch_size: int = 64
    device: str = "auto"
    workers: int = 4
    cache_dir: str | None = None
    plots: bool = True
    progress: bool = True
    precision: str = "fp32"
    chunk_size: int = 512


@dataclass
class BenchmarkConfig(ModelRun):
    """Settings of a benchmark run, and those of :class:`ModelRun`.

    Args:
        data (`str`): D3S dataset folder (``d3s generate``'s output) or Hub id.
        out (`str`): results folder; reused runs skip the models already evaluated there.
        models (`str` or `list`, defaults to ``"default"``): timm names, ``clip:<arch>/<pretrained>``, ``default``.
        split (`str`, *optional*): D3S split; default ``benchmark``, the checked images (``d3s split``), as the
            paper. Another split (``validation``, ``train``) is scored with a warning: its images are unchecked.
        imagenet_val (`str`, *optional*): ImageNet val as an ImageNet-style folder or a Hub id; without it,
            no drop is computed and the drop and scatter plots are skipped.
    """

    data: str
    out: str
    models: str | list[str] = "default"
    split: str | None = None
    imagenet_val: str | None = None


def check_config(c: ModelRun) -> None:
    try:
        autocast_dtype(c.precision)
    except PrecisionError as err:
        raise BenchmarkError(str(err)) from None
    if c.batch_size < 1:
        raise BenchmarkError(f"--batch-size must be at least 1, got {c.batch_size}.")
    if c.chunk_size < 1:
        raise BenchmarkError(f"--chunk-size must be at least 1, got {c.chunk_size}.")
    if c.workers < 0:
        raise BenchmarkError(f"--workers must be 0 or more, got {c.workers}.")
    out = Path(c.out)
    if out.exists() and not out.is_dir():
        raise BenchmarkError(f"--out {c.out} is a file; give a folder for the results.")


def run_benchmark(c: BenchmarkConfig, specs: list[ClassifierSpec] | None = None, log: Callable[[str], None] = print) -> dict:
    """Evaluate ``c.models`` (or the given ``specs``) and write results, summary and plots.

    Returns the summary dict, with ``evaluated`` (models run now), ``skipped`` (results reused) and
    ``failed`` (model, error) lists, and ``rank`` 0. Under ``accelerate launch`` every process runs this, each scoring
    its share of the chunks (:func:`run_models`); the others log nothing and return only ``rank``, ``skipped`` and empty
    ``evaluated`` and ``failed`` lists.
    """
    # 1. inputs, all checked before any decoding (by every process, so a refusal never leaves one waiting)
    check_config(c)
    from .generate import distributed_state

    rank, _, _, process_device = distributed_state()
    log = log if rank == 0 else (lambda line: None)  # one process speaks
    if specs is None:
        specs = resolve_classifiers(parse_model_list(c.models), pretrained=c.pretrained, prompts=c.clip_prompts,
                                    names=c.clip_names)
    split = c.split or BENCHMARK_SPLIT
    if not c.split and Path(c.data).is_dir() and BENCHMARK_SPLIT not in (found := find_splits(c.data)):
        from .curate import empty_split_note

        note = empty_split_note(c.data)
        why = (f"`d3s split` left it empty ({note})" if note else
               f"the benchmark scores the checked images, made by `d3s split --data {c.data} --out SPLITS`")
        raise BenchmarkError(f"{c.data} has no {BENCHMARK_SPLIT!r} split (found: {', '.join(found)}): {why}; to score unchecked "
                             f"images anyway, pass --split {'validation' if 'validation' in found else next(iter(found))}.")
    d3s = open_d3s(c.data, split)
    check = benchmark_check(c.data, split)
    if split == BENCHMARK_SPLIT:
        log(f"scoring split {split!r} of {c.data}: {len(d3s)} images; how they were kept: {check['basis']}")
    else:
        log(f"warning: scoring split {split!r} of {c.data}: its {len(d3s)} images are unchecked (no human review or automatic "
            f"check removed wrong or unsafe images); the paper's benchmark is the checked {BENCHMARK_SPLIT!r} split (`d3s split`)")
    ref = open_reference(c.imagenet_val) if c.imagenet_val else None
    data = {"d3s": d3s.fingerprint, "imagenet": ref.fingerprint if ref else None}
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    if d3s.skipped:
        log(f"note: {d3s.skipped} rows of non-ImageNet concepts are left out (no ImageNet-1k classifier can predict them)")

    # 2-4. plan (reuse matching results), decode each process's chunks once per preprocessing setting, score, merge
    def describe(result: dict) -> str:
        drop = "" if result["drop_top1"] is None else f", drop {100 * result['drop_top1']:+.1f} points vs ImageNet"
        text = (f"{result['model']}: D3S top-1 {100 * result['d3s']['top1']:.1f}% top-5 {100 * result['d3s']['top5']:.1f}%{drop}; "
                f"worst background: {result['d3s']['worst_background'] or 'none (all backgrounds tie)'}")
        cf = result["d3s"].get("counterfactual")
        if cf:
            text += (f"\n{result['model']}: same object on every background ({cf['groups']} groups): consistency "
                     f"{100 * cf['consistency']:.1f}%, correct on all {100 * cf['all_backgrounds_top1']:.1f}%; "
                     f"most flips: {cf['most_flips_background'] or 'none (all backgrounds tie)'}")
        return text

    device = process_device or resolve_device(c.device)  # under `accelerate launch`, each process's own GPU
    images = {"d3s": d3s, **({"imagenet": ref} if ref is not None else {})}
    scoring = Scoring(
        parts={name: (len(s), c.chunk_size) for name, s in images.items()}, images=images,
        needs=lambda chunk: {chunk.part: np.arange(chunk.start, chunk.stop)},
        decode=lambda s, data_config, path: decode(s, data_config, path, c.workers, c.progress and rank == 0),
        score=lambda spec, clf, chunk, decoded: score_chunk(spec, clf, chunk, decoded, c, device),
        merge=lambda spec, outputs, seconds, devices: model_result(spec, outputs, seconds, devices, d3s, ref, data, c),
        write=write_result, describe=describe)
    evaluated, skipped, failed = run_models(specs, out, data, scoring, device, log, c.cache_dir, c.precision, c.progress)
    if rank != 0:  # the main process writes the summary
        return {"rank": rank, "evaluated": evaluated, "skipped": skipped, "failed": failed}

    # 5. summary and plots over everything in the folder for this data
    summary = write_summary(out, data, failed, d3s.bg_names, check)
    for note in summary_notes(summary):
        log(f"note: {note}")
    if c.plots and summary["models"]:
        from .plots import draw_all

        summary["plots"] = draw_all(out, summary)
    summary.update(evaluated=evaluated, skipped=skipped, rank=rank)
    return summary


@dataclass
class Scoring:
    """What a scoring command shares among processes, for :func:`run_models`.

    Args:
        parts (`dict[str, tuple[int, int]]`): per part, in order, its items and items per chunk (a part is an image
            set, or another list of items such as the adversarial search's foregrounds).
        images (`dict[str, ImageSet]`): the image sets chunks read, by name, in decoding order.
        needs (`Callable[[Chunk], dict[str, np.ndarray]]`): the rows of each image set a chunk reads.
        decode (`Callable[[ImageSet, dict, Path], np.ndarray]`): images (a subset) -> uint8 array, for a preprocessing
            setting (the data config), memory-mapped at the path.
        score (`Callable[[ClassifierSpec, Classifier, Chunk, Decoded], dict[str, np.ndarray]]`): one chunk's outputs,
            arrays over its items (a scalar as a 1-element array).
        merge (`Callable[[ClassifierSpec, dict[str, dict[str, np.ndarray]], float, str], dict]`): the result record from
            every chunk's outputs concatenated per part in order, the seconds the chunks took and the devices that ran them.
        write (`Callable[[Path, dict], object]`): writes a result; describe (`Callable[[dict], str]`): a line about it.
    """

    parts: dict[str, tuple[int, int]]
    images: dict[str, ImageSet]
    needs: Callable[[Chunk], dict[str, np.ndarray]]
    decode: Callable[[ImageSet, dict, Path], np.ndarray]
    score: Callable[..., dict[str, np.ndarray]]
    merge: Callable[..., dict]
    write: Callable[[Path, dict], object]
    describe: Callable[[dict], str]


def run_models(specs: list[ClassifierSpec], out: str | Path, data: dict, scoring: Scoring, device,
               log: Callable[[str], None] = print, cache_dir: str | None = None, precision: str = "fp32",
               progress: bool = True) -> tuple[list[str], list[str], list[dict]]:
    """Steps 2-4 of :func:`run_benchmark`, shared with :mod:`d3s.bgchallenge`, over one process or many (``accelerate launch``).

    1. models whose stored result matches ``data`` (and their own identity and ``precision``) are skipped; the rest are
       grouped by preprocessing setting; every process lists the chunks already written (:mod:`d3s.chunks`) before any
       process writes one;
    2. per group, this process takes its share of the chunks some model lacks (:func:`d3s.chunks.share`) and decodes
       the images they read once, on the first model's demand (a group whose models all fail to build decodes nothing);
    3. per model, each of its missing chunks of that share is scored (``scoring.score``) and written; a model that
       fails is recorded (``error-<rank>.txt``) and the others go on;
    4. after a barrier, the main process merges each model's chunks (``scoring.merge``), writes the result
       (``scoring.write``), logs ``scoring.describe(result)`` and removes the chunks. A model with chunks missing is
       reported as failed, with a process's error; its written chunks stay for the next run.

    One process is the same code with one share. Returns ``(evaluated, skipped, failed)`` on the main process (model
    names, model names, ``{"model", "error"}`` dicts); on the others, ``([], skipped, [])``.
    """
    from tqdm.auto import tqdm

    from .chunks import (ChunkStore, Decoded, chunk_key, end_process_group, needed_rows, plan_chunks, remaining_count, share,
                         subset)
    from .generate import distributed_state

    out = Path(out)
    rank, world, barrier, _ = distributed_state()
    todo = [s for s in specs if not result_matches(load_result(out, s.name), s, data, precision)]
    skipped = [s.name for s in specs if s not in todo]
    chunks = plan_chunks(scoring.parts)
    stores = {s.name: ChunkStore(out, s.name, chunk_key(s.identity(), data, precision, scoring.parts)) for s in specs}
    barrier()  # every process has judged the same folder before any writes
    if rank == 0:
        for s in specs:  # chunks of models done go; temporary files, errors and stale chunks of the others
            if s.name in skipped:
                stores[s.name].remove()
            else:
                stores[s.name].tidy()
    barrier()
    done = {s.name: stores[s.name].done() for s in todo}
    barrier()  # every process has listed the same chunks before any writes one
    if skipped:
        log(f"already evaluated (results reused): {', '.join(skipped)}")
    groups: dict[tuple, list[ClassifierSpec]] = {}
    for s in todo:
        groups.setdefault(s.decode_key, []).append(s)

    turn = 0  # the process that takes the next group's first chunk
    for key, members in groups.items():
        mine = share(chunks, [done[m.name] for m in members], rank, world, turn)
        turn = (turn + remaining_count(chunks, [done[m.name] for m in members])) % world
        with tempfile.TemporaryDirectory(prefix="d3s-decode-", dir=cache_dir) as tmp:
            decoded = Decoded()

            def shared_arrays(members=members, key=key, tmp=tmp, mine=mine, decoded=decoded) -> Decoded:
                if not decoded.arrays:
                    t0 = time.perf_counter()
                    wanted = needed_rows([scoring.needs(c) for c in mine])
                    arrays = {}
                    for name, images in scoring.images.items():
                        if name in wanted:
                            arrays[name] = scoring.decode(subset(images, wanted[name]), members[0].data_config,
                                                          Path(tmp) / f"{name}.npy")
                    for name, array in arrays.items():  # all or nothing: a failed decode is retried
                        decoded.add(name, wanted[name], array)
                    log(f"decoded {len(decoded)} images at {key[0][1]}x{key[0][2]} ({key[1]}, crop {key[2]}) "
                        f"in {time.perf_counter() - t0:.1f}s, shared by {len(members)} model(s): {', '.join(m.name for m in members)}")
                return decoded

            for spec in members:
                missing = [c for c in mine if c.name not in done[spec.name]]
                if not missing:
                    continue
                bar = tqdm(total=sum(len(c) for c in missing), unit="item", desc=spec.name, leave=False,
                           disable=not (progress and rank == 0))
                clf = None
                try:
                    t0 = time.perf_counter()
                    clf = build_seeded(spec, device)  # first: a model that cannot be built costs no decoding
                    arrays = shared_arrays()
                    for chunk in missing:
                        outputs = scoring.score(spec, clf, chunk, arrays)
                        stores[spec.name].write(chunk, outputs, time.perf_counter() - t0, str(device))
                        bar.update(len(chunk))
                        t0 = time.perf_counter()
                except Exception as err:  # OOM, a download that failed, a broken model: record it, go on
                    stores[spec.name].write_error(rank, _one_line(err))
                finally:
                    clf = None
                    bar.close()
                    _free(device)

    barrier()  # every process has written its chunks
    end_process_group(world)  # the merge is the main process's alone
    evaluated, failed = [], []
    if rank != 0:
        return evaluated, skipped, failed
    for spec in todo:
        store = stores[spec.name]
        have = store.done()
        lacking = sum(c.name not in have for c in chunks)
        try:
            if lacking:
                errors = store.errors()
                raise _ChunksMissing(errors[0] if errors else f"{lacking} of {len(chunks)} chunks were not scored "
                                                                  "(a process stopped?)")
            outputs, seconds, devices = store.merged(chunks)
            result = scoring.merge(spec, outputs, seconds, devices)
        except Exception as err:
            msg = str(err) if isinstance(err, _ChunksMissing) else _one_line(err)
            failed.append({"model": spec.name, "error": msg})
            log(f"FAILED {spec.name}: {msg}")
            continue
        scoring.write(out, result)
        store.remove()
        evaluated.append(spec.name)
        log(scoring.describe(result))
    return evaluated, skipped, failed


class _ChunksMissing(Exception):
    """A model some of whose chunks no process wrote; the message says why."""


def _one_line(err: Exception) -> str:
    """An error as the results and the log report it (and its traceback printed when ``D3S_DEBUG`` is set)."""
    if os.environ.get("D3S_DEBUG"):
        traceback.print_exception(err)
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:500]


def _free(device) -> None:
    import gc

    gc.collect()
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.empty_cache()


def score_chunk(spec: ClassifierSpec, clf, chunk: Chunk, decoded: Decoded, c: ModelRun, device) -> dict[str, np.ndarray]:
    """One chunk of an image set (``d3s`` or ``imagenet``) through a built model: its top-5 predictions."""
    images = decoded.take(chunk.part, np.arange(chunk.start, chunk.stop))
    return {"top5": predict_top5(clf.model, spec.data_config, images, c.batch_size, device, precision=c.precision)}


def model_result(spec: ClassifierSpec, outputs: dict, seconds: float, devices: str, d3s: ImageSet, ref: ImageSet | None,
                 data: dict, c: BenchmarkConfig) -> dict:
    """A model's result record from its top-5 predictions on every image (``outputs[part]["top5"]``).

    ``seconds`` and ``devices`` are the run-time fields: the time the model's chunks took, summed over processes
    (building the model included), and the devices that ran them.
    """
    top5 = outputs["d3s"]["top5"]
    result_d3s = {**scores(top5, d3s.fg), **breakdowns(top5, d3s)}
    if d3s.group is not None:
        result_d3s["counterfactual"] = counterfactual_scores(top5[:, 0], d3s.fg, d3s.bg, d3s.group, d3s.bg_names)
    result_ref = scores(outputs["imagenet"]["top5"], ref.fg) if ref is not None else None
    return {
        "model": spec.name, "kind": spec.kind, "family": spec.family, "extra_data": spec.extra_data,
        "identity": spec.identity(), "data": data,
        "d3s": result_d3s, "imagenet": result_ref,
        "drop_top1": None if result_ref is None else result_ref["top1"] - result_d3s["top1"],
        "drop_top5": None if result_ref is None else result_ref["top5"] - result_d3s["top5"],
        "seconds": round(seconds, 3), "device": devices, "precision": c.precision,
        "d3s_version": __version__,
    }
