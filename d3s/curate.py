"""Curation: automatic checks (``d3s score``) and the train / validation / benchmark splits (``d3s split``).

The paper set 20,000 of its 120,000 images aside for validation and had people check each (appendix B):
10.2% lacked the intended foreground, about 1% were unsafe; the 17,866 left are the D3S benchmark.

``score`` adds per-image columns to a generated folder, shard by shard (atomically; under ``accelerate launch`` the
processes share the shards, and a shard already scored by the same check is kept, so a killed run resumes):
``pixel_std`` and ``blank`` (near-uniform output, e.g. a blacked-out unsafe image), and with a
zero-shot CLIP classifier ``clip_rank`` (rank of the intended class among the 1000 class prompts, 1 is
best) and ``clip_margin`` (intended score minus the best other). It reports how many images each
threshold would remove, per class and per background, before anything is dropped.

``split`` writes a new dataset folder: ``train`` and ``validation`` cut per (fg, bg) cell by each row's
seed (stratified, reproducible), and ``benchmark``, the validation rows that pass human review, or
where no review exists, the automatic checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .dataset import DATA_DIR, DatasetFormatError, local_folder, read_parquet, shard_paths, split_files, write_card

VALIDATION_FRACTION = 20_000 / 120_000  # the paper's share: 2 of every 12 images of a (fg, bg) pair
BLANK_STD = 2.0  # pixel standard deviation (0..255) under which an image counts as blank
# The columns `score` adds, with their `datasets` dtypes.
SCORE_COLUMNS = {"pixel_std": "float32", "blank": "bool", "clip_rank": "int32", "clip_margin": "float32"}
SCORE_RECORD = "d3s_score.json"  # which zero-shot model gave the clip_rank / clip_margin columns
SPLIT_REPORT = "split_report.json"
CHECK_COLUMNS = ("nsfw", "blank", "clip_rank", "clip_margin")  # what the automatic checks read (Thresholds.reasons)


@dataclass
class Thresholds:
    """What the automatic checks remove. ``max_rank``: keep images whose intended class CLIP ranks at most this."""

    max_rank: int = 5
    min_margin: float | None = None
    drop_blank: bool = True
    drop_nsfw: bool = True

    def reasons(self, row: dict) -> list[str]:
        out = []
        if self.drop_nsfw and row.get("nsfw"):
            out.append("nsfw")
        if self.drop_blank and row.get("blank"):
            out.append("blank")
        if row.get("clip_rank") is not None and row["clip_rank"] > self.max_rank:
            out.append(f"clip_rank>{self.max_rank}")
        if self.min_margin is not None and row.get("clip_margin") is not None and row["clip_margin"] < self.min_margin:
            out.append(f"clip_margin<{self.min_margin}")
        return out


def _decode(cell: dict) -> Image.Image:
    return Image.open(io.BytesIO(cell["bytes"])).convert("RGB")


def _class_names(table_or_schema) -> tuple[list[str], list[str]]:
    """fg/bg names from the `datasets` features in a shard's schema metadata."""
    import datasets

    schema = table_or_schema.schema if hasattr(table_or_schema, "schema") else table_or_schema
    feats = datasets.Features.from_arrow_schema(schema)
    for col in ("fg", "bg"):
        if not isinstance(feats.get(col), datasets.ClassLabel):
            raise DatasetFormatError(f"the shards have no {col!r} ClassLabel column; d3s needs 'image', 'fg' and 'bg'.")
    return feats["fg"].names, feats["bg"].names


def _rewrite(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _with_column(table: pa.Table, name: str, values: list) -> pa.Table:
    arr = pa.array(values, type=pa.from_numpy_dtype(np.dtype(SCORE_COLUMNS[name])))
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, arr)
    return table.append_column(name, arr)


def _features_with_scores(old_schema: pa.Schema, table: pa.Table):
    """The `datasets` features of ``old_schema`` (ClassLabels intact) plus the score columns present."""
    import datasets

    feats = datasets.Features.from_arrow_schema(old_schema)
    for name in table.column_names:
        if name not in feats:
            feats[name] = datasets.Value(SCORE_COLUMNS[name])
    return feats


ZeroShot = Callable[[Sequence[Image.Image]], np.ndarray]  # images -> (N, num_fg_classes) scores


def zero_shot_scorer(name: str, pretrained: bool = True, device: str | None = None, precision: str = "fp32") -> ZeroShot:
    """The foreground check's classifier: any name of the benchmark's registry (``clip:ViT-B-32/openai``,
    ``clip:tiny``, or a timm ImageNet model), with its own preprocessing; returns images -> 1000 logits.
    ``precision``: ``fp32`` (default, no autocast), ``bf16`` or ``fp16`` (autocast); recorded by :func:`score`.
    ``device``: by default the process's own GPU under ``accelerate launch``, else CUDA when there is one, else the CPU."""
    import torch
    from timm.data import create_transform

    from .chunks import build_seeded
    from .classifiers import resolve_classifier
    from .generate import distributed_state
    from .inference import autocast_dtype

    spec = resolve_classifier(name, pretrained=pretrained)
    device = device or str(distributed_state()[3] or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = build_seeded(spec, device).model  # random weights: the same in every process
    keys = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    transform = create_transform(**{k: spec.data_config[k] for k in keys if k in spec.data_config})

    amp_dtype = autocast_dtype(precision)

    @torch.inference_mode()
    def scores(images: Sequence[Image.Image]) -> np.ndarray:
        batch = torch.stack([transform(im) for im in images]).to(device)
        with torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(batch).float().cpu().numpy()

    scores.model_name = spec.name  # recorded by `score`, so the benchmark can say which model filtered it
    scores.precision = precision
    # recorded in each shard it scores, so a rerun keeps them; random weights differ from build to build: none
    scores.identity = {**spec.identity(), "precision": precision} if pretrained else None
    return scores


def score(data: str | Path, split: str = "train", zero_shot: ZeroShot | None = None, batch_size: int = 64,
          progress: bool = True) -> dict:
    """Add the automatic-check columns to every shard of ``split``; returns counts of rows and flags.

    1. list the shards (every process, before any rewrites one);
    2. share them among processes (``accelerate launch``), every ``world``-th from the process's rank;
    3. per shard: a shard already scored by the same check (recorded in its metadata: the zero-shot model's identity
       and precision) is kept as it is, so a killed run resumes; otherwise decode, score and rewrite it, atomically;
    4. after a barrier, the main process counts the rows and flags of every shard and writes the card and
       ``d3s_score.json``.

    Returns ``{"rows", "blank", "scored", "reused", "rank"}`` (shards scored now by all processes, and kept) on the main
    process; the others return ``scored``, ``reused`` and ``rank``.
    """
    from tqdm.auto import tqdm

    from .chunks import end_process_group
    from .generate import distributed_state

    # 1. shards, listed by every process before any writes
    paths = shard_paths(data, split)
    if not paths:
        raise DatasetFormatError(f"{data} has no shards of split {split!r} under {DATA_DIR}/ (score adds columns to the "
                                 f"shards `d3s generate` writes, {DATA_DIR}/<split>-<first>-<last>.parquet, in place).")
    rank, world, barrier, _ = distributed_state()
    check = _check_identity(zero_shot)
    done = [p for p in paths if check is not None and _scored_with(pq.read_schema(p)) == check]
    todo = [p for p in paths if p not in done]
    barrier()  # every process has listed the same shards before any rewrites one

    # 2-3. this process's shards
    for path in tqdm(todo[rank::world], desc="scoring shards", disable=not (progress and rank == 0)):
        _score_shard(path, zero_shot, batch_size, check)

    # 4. counts, card and record, by the main process once every shard is written
    barrier()
    end_process_group(world)
    if rank != 0:
        return {"scored": len(todo), "reused": len(done), "rank": rank}
    rows = blank = 0
    for path in paths:
        flags = read_parquet(path, ["blank"]).column("blank").to_pylist()
        rows += len(flags)
        blank += sum(flags)
    _refresh_card(data)
    if zero_shot is not None:
        record = {"split": split, "zero_shot": getattr(zero_shot, "model_name", None),
                  "precision": getattr(zero_shot, "precision", None)}
        (Path(data) / SCORE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return {"rows": rows, "blank": blank, "scored": len(todo), "reused": len(done), "rank": rank}


SCORE_METADATA = b"d3s_score"  # in a scored shard's schema metadata: the check that scored it (JSON)


def _check_identity(zero_shot: ZeroShot | None) -> dict | None:
    """What a shard scored by this check records, or None when the check cannot be told apart from another (a
    zero-shot callable without an ``identity``: its shards are always scored again)."""
    if zero_shot is None:
        return {"zero_shot": None}
    identity = getattr(zero_shot, "identity", None)
    return None if identity is None else {"zero_shot": identity}


def _scored_with(schema: pa.Schema) -> dict | None:
    raw = (schema.metadata or {}).get(SCORE_METADATA)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _score_shard(path: Path, zero_shot: ZeroShot | None, batch_size: int, check: dict | None) -> None:
    """Decode one shard, add the check columns, rewrite it atomically (with the check recorded in its metadata)."""
    table = read_parquet(path)
    original_schema = table.schema
    _class_names(table)
    images = [_decode(c) for c in table.column("image").to_pylist()]
    stds = [float(np.asarray(im, dtype=np.float32).std()) for im in images]
    table = _with_column(table, "pixel_std", stds)
    table = _with_column(table, "blank", [s < BLANK_STD for s in stds])
    if zero_shot is not None:
        fg = np.asarray(table.column("fg").to_pylist())
        ranks, margins = [], []
        for i in range(0, len(images), batch_size):
            logits = np.asarray(zero_shot(images[i : i + batch_size]), dtype=np.float64)
            target = fg[i : i + batch_size]
            own = logits[np.arange(len(target)), target]
            ranks.extend((logits > own[:, None]).sum(1) + 1)
            others = logits.copy()
            others[np.arange(len(target)), target] = -np.inf
            margins.extend(own - others.max(1))
        table = _with_column(table, "clip_rank", [int(x) for x in ranks])
        table = _with_column(table, "clip_margin", [float(x) for x in margins])
    metadata = dict(_features_with_scores(original_schema, table).arrow_schema.metadata)
    if check is not None:
        metadata[SCORE_METADATA] = json.dumps(check, sort_keys=True).encode()
    _rewrite(path, table.replace_schema_metadata(metadata))


def _refresh_card(data: str | Path) -> None:
    """Rewrite the card's YAML features from the shards, keeping its Markdown body."""
    import datasets

    card = Path(data) / "README.md"
    body = card.read_text().split("---\n", 2)[-1] if card.exists() else "# D3S\n"
    feats = datasets.Features.from_arrow_schema(pq.read_schema(shard_paths(data)[0]))
    write_card(data, feats, body)


def _read_all(data: str | Path, split: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One split of a local dataset folder (any parquet layout, see :func:`d3s.dataset.find_splits`) as one table
    (only ``columns``, those of them a file has: a column some files lack is null in their rows)."""
    tables = []
    for p in split_files(data, split):
        with pq.ParquetFile(p) as f:
            names = f.schema_arrow.names
            tables.append(f.read(columns=None if columns is None else [c for c in columns if c in names]))
    return pa.concat_tables(tables, promote_options="default")


class _ShardWriter:
    """Rows of one output split, written as shards of ``rows`` rows (``<name>-<k>-<last row>.parquet``) as they come,
    so a split never has to be held in memory whole."""

    def __init__(self, folder: Path, name: str, rows: int, metadata: dict | None):
        self.folder, self.name, self.rows, self.metadata = folder, name, rows, metadata
        self.buffer: list[pa.Table] = []
        self.buffered = self.written = self.shards = 0

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.rows:
            self._flush(self.rows)

    def close(self) -> None:
        if self.buffered:
            self._flush(self.buffered)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.buffer)
        chunk, rest = table.slice(0, n), table.slice(n)
        pq.write_table(chunk.replace_schema_metadata(self.metadata),
                       self.folder / f"{self.name}-{self.shards:08d}-{(self.written + n - 1):08d}.parquet")
        self.shards, self.written = self.shards + 1, self.written + n
        self.buffer, self.buffered = ([rest] if rest.num_rows else []), rest.num_rows


def removal_report(data: str | Path, split: str = "train", thresholds: Thresholds = Thresholds()) -> dict:
    """How many images the automatic checks would remove, and why, overall, per class and per background."""
    schema = pq.read_schema(split_files(data, split)[0])
    cols = [c for c in ("fg", "bg", "nsfw", "blank", "clip_rank", "clip_margin") if c in schema.names]
    table = _read_all(data, split, cols)
    fg_names, bg_names = _class_names(schema)
    reasons, per_class, per_bg = Counter(), Counter(), Counter()
    removed = 0
    for row in table.to_pylist():
        why = thresholds.reasons(row)
        reasons.update(why)
        if why:
            removed += 1
            per_class[fg_names[row["fg"]]] += 1
            per_bg[bg_names[row["bg"]]] += 1
    return {"rows": table.num_rows, "removed": removed, "reasons": dict(reasons),
            "per_class": dict(per_class.most_common()), "per_background": dict(per_bg.most_common())}


def format_report(report: dict, top: int = 10) -> str:
    lines = [f"{report['removed']} of {report['rows']} images would be removed"]
    lines += [f"  {why:<16} {n}" for why, n in report["reasons"].items()]
    if report["per_background"]:
        lines.append("per background:")
        lines += [f"  {bg:<16} {n}" for bg, n in report["per_background"].items()]
    if report["per_class"]:
        lines.append(f"most affected classes (top {top}):")
        lines += [f"  {name:<30} {n}" for name, n in list(report["per_class"].items())[:top]]
    return "\n".join(lines)


# --- splits ---------------------------------------------------------------------------------------------

def _order_key(seed: int, salt: int) -> str:
    return hashlib.sha256(f"{salt}:{seed}".encode()).hexdigest()


def assign_validation(fg: Sequence[int], bg: Sequence[int], seeds: Sequence[int], fraction: float = VALIDATION_FRACTION,
                      salt: int = 0) -> np.ndarray:
    """Boolean mask of validation rows: in each (fg, bg) cell, the ``round(fraction * n)`` rows first by a hash of their seed."""
    if not 0.0 < fraction < 1.0:
        raise DatasetFormatError(f"--validation-fraction must be in (0, 1), got {fraction}.")
    cells: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(fg, bg)):
        cells[key].append(i)
    mask = np.zeros(len(fg), dtype=bool)
    for members in cells.values():
        k = int(round(fraction * len(members)))
        chosen = sorted(members, key=lambda i: _order_key(seeds[i], salt))[:k]
        mask[chosen] = True
    return mask


def split(data: str | Path, out: str | Path, source_split: str = "train", fraction: float = VALIDATION_FRACTION,
          reviews: str | Path | None = None, rule: str = "unanimous", thresholds: Thresholds = Thresholds(),
          salt: int = 0, rows_per_shard: int = 1000) -> dict:
    """Write ``out`` with train / validation / benchmark splits; returns the report (also saved as ``split_report.json``)."""
    import datasets

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DatasetFormatError(f"{out} is not empty; choose a new --out for the split dataset.")
    data = local_folder(data)
    files = split_files(data, source_split)
    schemas = [pq.read_schema(p) for p in files]
    schema, unified = schemas[0], pa.unify_schemas(schemas, promote_options="default")
    # what the cut and the checks read; the rows themselves are copied shard by shard below
    table = _read_all(data, source_split, [c for c in ("item_id", "fg", "bg", "seed", *CHECK_COLUMNS) if c in unified.names])
    fg_names, bg_names = _class_names(schema)
    fg, bg = table.column("fg").to_pylist(), table.column("bg").to_pylist()
    seeds = table.column("seed").to_pylist() if "seed" in table.column_names else list(range(table.num_rows))
    item_ids = table.column("item_id").to_pylist() if "item_id" in table.column_names else list(range(table.num_rows))
    is_val = assign_validation(fg, bg, seeds, fraction, salt)

    removed: Counter = Counter()
    filter_model = None
    if reviews is not None:
        from .review import dataset_key, open_store

        key = dataset_key(data)  # the answers to this folder's rows (the app's, on it or on a split of it)
        verdicts = open_store(reviews).verdicts(key, rule)
        keep = []
        for i, item in enumerate(item_ids):
            v = verdicts.get(int(item))
            ok = bool(v and v.keep)
            if is_val[i] and not ok:
                removed["not reviewed" if v is None else ("unsafe" if v.unsafe_votes else "object missing")] += 1
            keep.append(ok)
        basis = f"human review ({rule}, dataset key {key})"
    else:
        rows = table.select([c for c in CHECK_COLUMNS if c in table.column_names]).to_pylist()
        keep = []
        for i, row in enumerate(rows):
            why = thresholds.reasons(row)
            if is_val[i]:
                removed.update(why[:1])
            keep.append(not why)
        ran = []  # the checks whose columns hold values: say which ran, not just "automatic checks"
        if thresholds.drop_nsfw and any(r.get("nsfw") is not None for r in rows):
            ran.append("NSFW flag")
        if thresholds.drop_blank and "blank" in table.column_names:
            ran.append("blank image")
        if "clip_rank" in table.column_names:
            filter_model = _score_record(data).get("zero_shot")
            ran.append(f"CLIP rank <= {thresholds.max_rank} by {filter_model or 'a zero-shot model not recorded'}")
        basis = (f"automatic checks ({'; '.join(ran)})" if ran else
                 "no check: no NSFW flags and no `d3s score` columns, so every validation image is kept (run `d3s score` first)")
    in_benchmark = is_val & np.asarray(keep, dtype=bool)

    feats = datasets.Features.from_arrow_schema(schema)
    parts = {"train": ~is_val, "validation": is_val, "benchmark": in_benchmark}
    (out / DATA_DIR).mkdir(parents=True)
    report: dict = {"source": str(data), "basis": basis, "filter_model": filter_model, "validation_fraction": fraction,
                    "splits": {}, "removed": dict(removed), "validation_note": validation_note(fg, bg, is_val, fraction)}
    writers = {name: _ShardWriter(out / DATA_DIR, name, rows_per_shard, schema.metadata) for name in parts}
    start = 0
    for path in files:  # one source shard in memory at a time, its rows sent to the splits they belong to
        rows_of = read_parquet(path)
        if not rows_of.schema.equals(unified):  # a column other shards have (null here), or a wider type
            rows_of = pa.concat_tables([unified.empty_table(), rows_of], promote_options="default")
        stop = start + rows_of.num_rows
        for name, mask in parts.items():
            picked = np.flatnonzero(mask[start:stop])
            if len(picked):
                writers[name].add(rows_of.take(pa.array(picked, type=pa.int64())))
        start = stop
    for name, mask in parts.items():
        writers[name].close()
        per_bg = Counter(bg_names[b] for b in np.asarray(bg)[mask].tolist())
        report["splits"][name] = {"rows": int(mask.sum()), "per_background": {b: per_bg.get(b, 0) for b in bg_names}}
    (out / SPLIT_REPORT).write_text(json.dumps(report, indent=2))
    manifest = Path(data) / "d3s_run.json"
    if manifest.exists():
        (out / "d3s_run.json").write_text(manifest.read_text())
    write_card(out, feats, f"# D3S splits\n\nMade by `d3s split` from `{Path(data).name}`; benchmark basis: {basis}.\n")
    return report


def empty_split_note(data: str | Path) -> str | None:
    """Why `d3s split` left ``data``'s validation (and so benchmark) split empty, from its report; None otherwise."""
    try:
        return json.loads((Path(data) / SPLIT_REPORT).read_text()).get("validation_note")
    except (OSError, ValueError):
        return None


def _score_record(data: str | Path) -> dict:
    try:
        return json.loads((Path(data) / SCORE_RECORD).read_text())
    except (OSError, ValueError):
        return {}


def validation_note(fg: Sequence[int], bg: Sequence[int], is_val: np.ndarray, fraction: float) -> str | None:
    """What to say when some (fg, bg) cell got no validation image, with the fraction that would give each one; else None.

    A cell of n images gives ``round(fraction * n)`` to validation, so every cell gets one when
    ``fraction * n > 0.5`` for the smallest n (Python rounds 0.5 to 0).
    """
    sizes: Counter = Counter(zip(fg, bg))
    in_val: Counter = Counter(k for k, v in zip(zip(fg, bg), is_val) if v)
    empty = [k for k in sizes if not in_val[k]]
    if not empty:
        return None
    smallest = min(sizes[k] for k in empty)
    what = ("the validation split is empty" if not is_val.any()
            else f"{len(empty)} of {len(sizes)} (fg, bg) cells have no validation image")
    why = f"cells of {smallest} image(s) give round({fraction:.3g} x {smallest}) = {round(fraction * smallest)} to validation"
    if smallest == 1:
        return (f"{what}: {why}, and a cell of one image cannot give one to validation and keep one for training; "
                "generate at least 2 images per pair (`d3s generate --per-pair`).")
    needed = 0.5 / smallest
    suggestion = math.floor(needed * 100) / 100 + 0.01
    return f"{what}: {why}; --validation-fraction {suggestion:.2f} (any value above {needed:.3g}) gives every cell one."


def format_split_report(report: dict) -> str:
    s = report["splits"]
    lines = [f"train {s['train']['rows']}, validation {s['validation']['rows']}, benchmark {s['benchmark']['rows']} "
             f"(benchmark = validation passing {report['basis']})"]
    if report.get("validation_note"):
        lines.append(f"warning: {report['validation_note']}")
    if report["removed"]:
        lines.append("removed from the benchmark: " + ", ".join(f"{k} {v}" for k, v in report["removed"].items()))
    names = list(s["train"]["per_background"])
    lines.append(f"  {'background':<14}" + "".join(f"{n:>12}" for n in s))
    for b in names:
        lines.append(f"  {b:<14}" + "".join(f"{s[n]['per_background'][b]:>12}" for n in s))
    return "\n".join(lines)
