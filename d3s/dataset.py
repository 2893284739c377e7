"""The dataset format: a folder laid out as a Hugging Face Hub dataset repository.

::

    OUT/
      README.md                      # card; its YAML declares configs (splits) and features
      data/train-00000000-00000063.parquet
      data/validation-....parquet
      d3s_run.json                   # generation settings (only for generated data)

Shards are parquet files holding `datasets` features in their schema metadata, written atomically
(temporary file, then rename), so a crash never leaves a half-written shard behind. Any folder in
this layout loads with ``datasets.load_dataset(OUT)`` with the ``fg``/``bg`` label names intact.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

DATA_DIR = "data"
_SHARD_RE = re.compile(r"^(?P<split>[a-z][a-z0-9_]*)-(?P<first>\d{8})-(?P<last>\d{8})\.parquet$")


class DatasetFormatError(ValueError):
    """A folder that is not a dataset in the project's format, or lacks what a command needs."""


def label_features(fg_names: Sequence[str], bg_names: Sequence[str]) -> dict[str, datasets.ClassLabel]:
    """The two label columns every d3s dataset has."""
    return {"fg": datasets.ClassLabel(names=list(fg_names)), "bg": datasets.ClassLabel(names=list(bg_names))}


def shard_name(split: str, first: int, last: int) -> str:
    """Shard file name; item ids are disjoint across shards, so names never collide across processes."""
    return f"{split}-{first:08d}-{last:08d}.parquet"


def write_shard(root: str | Path, split: str, rows: Sequence[dict], features: datasets.Features, key: str = "item_id") -> Path:
    """Encode ``rows`` (PIL images allowed) and write them as one parquet shard, atomically.

    Rows must carry an integer ``key`` column; the shard is named by its first and last key.
    """
    if not rows:
        raise ValueError("write_shard needs at least one row")
    encoded = [features.encode_example(r) for r in rows]
    return write_table(root, split, pa.Table.from_pylist(encoded, schema=features.arrow_schema), key)


def write_table(root: str | Path, split: str, table: pa.Table, key: str = "item_id") -> Path:
    """Write an Arrow table (schema from ``features.arrow_schema``) as one parquet shard, atomically.

    For columns too large to go through Python rows (precomputed features); named like :func:`write_shard`.
    """
    ids = table.column(key).to_numpy()
    path = Path(root) / DATA_DIR / shard_name(split, int(ids.min()), int(ids.max()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:  # the rename below must not reach the disk before the data does
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def shard_paths(root: str | Path, split: str | None = None) -> list[Path]:
    """The finished shards of a folder (temporary files excluded), sorted by name."""
    data = Path(root) / DATA_DIR
    if not data.is_dir():
        return []
    out = []
    for p in sorted(data.iterdir()):
        m = _SHARD_RE.match(p.name)
        if m and (split is None or m.group("split") == split):
            out.append(p)
    return out


def remove_partial_files(root: str | Path) -> int:
    """Delete temporary files a killed writer left behind; returns how many."""
    data = Path(root) / DATA_DIR
    removed = 0
    if data.is_dir():
        for p in data.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def read_column(paths: Iterable[Path], column: str) -> tuple[list, list[Path]]:
    """Read one column from shards; returns (values, unreadable shard paths)."""
    values: list = []
    bad: list[Path] = []
    for p in paths:
        try:
            values.extend(pq.read_table(p, columns=[column]).column(column).to_pylist())
        except (pa.ArrowException, OSError):
            bad.append(p)
    return values, bad


def splits_in(root: str | Path) -> list[str]:
    return sorted({_SHARD_RE.match(p.name).group("split") for p in shard_paths(root)})


def write_card(root: str | Path, features: datasets.Features, body: str, extra_yaml: dict | None = None) -> Path:
    """Write ``README.md``: YAML (configs per split found under ``data/``, features) and a Markdown body."""
    splits = splits_in(root)
    meta = dict(extra_yaml or {})
    meta["configs"] = [
        {"config_name": "default", "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*.parquet"} for s in splits]}
    ]
    meta["dataset_info"] = {"features": features._to_yaml_list()}
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body.strip() + "\n"
    path = Path(root) / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def load_raw(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """``datasets.load_dataset`` for a d3s folder or a Hub id, with no check of the columns.

    A local folder is loaded from its shards by absolute path: ``load_dataset(FOLDER)`` keys its cache by
    the folder's name and card, so two folders called ``d3s`` with the same card would share a stale cache.
    """
    local = Path(root)
    if local.is_dir() and shard_paths(local):
        files = {s: [str(p.resolve()) for p in shard_paths(local, s)] for s in splits_in(local)}
        return datasets.load_dataset("parquet", data_files=files, split=split)
    return datasets.load_dataset(str(root), split=split)


def load(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """Load a d3s folder (or a Hub dataset id) with ``datasets.load_dataset``; checks the label columns."""
    root_s = str(root)
    if Path(root_s).exists() and not shard_paths(root_s, split):
        where = f" for split {split!r}" if split else ""
        raise DatasetFormatError(f"{root_s} holds no d3s parquet shards{where} under {DATA_DIR}/ (found splits: {', '.join(splits_in(root_s)) or 'none'}).")
    ds = load_raw(root_s, split=split)
    for part in ([ds] if split else ds.values()):
        check_labels(part, root_s)
    return ds


def check_labels(ds: datasets.Dataset, where: str = "dataset") -> None:
    """Refuse a dataset without ``fg``/``bg`` ClassLabel columns, saying what it has instead."""
    for col in ("fg", "bg"):
        feat = ds.features.get(col)
        if not isinstance(feat, datasets.ClassLabel):
            raise DatasetFormatError(
                f"{where} has no {col!r} ClassLabel column (columns: {', '.join(ds.column_names)}); d3s needs 'image', 'fg' and 'bg'."
            )
