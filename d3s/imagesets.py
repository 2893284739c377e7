"""The images a benchmark reads: D3S splits (any layout `datasets` reads, or a Hub id) and ImageNet-style
reference folders, as one :class:`ImageSet`; and the shared decode that resizes them once per preprocessing setting.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import check_labels, find_splits, read_parquet, split_files
from .guides import IMAGE_EXTENSIONS

BENCHMARK_SPLIT = "benchmark"  # the checked images (`d3s split`: human review or the automatic checks), as the paper
DECODE_CHUNK = 64  # images read and decoded per task; small enough to keep workers busy

class BenchmarkError(ValueError):
    """Bad input to a benchmark (data, split, reference, output folder); raised before any model runs."""


# --- 1. the images ---------------------------------------------------------------------------------

@dataclass
class ImageSet:
    """Images with ImageNet-1k labels (and, for D3S, background labels).

    ``read(start, stop)`` returns encoded images (bytes) or file paths for rows ``start:stop``.
    """

    name: str
    source: str
    fg: np.ndarray
    read: Callable[[int, int], list]
    bg: np.ndarray | None = None
    bg_names: list[str] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)
    skipped: int = 0  # rows whose fg is not an ImageNet-1k class
    group: np.ndarray | None = None  # paired data: the object group of each row

    def __len__(self) -> int:
        return len(self.fg)


def _default_split(root: str) -> str:
    """``validation``, or the only split there is (for the commands that read any D3S split, e.g. diversity)."""
    splits = list(find_splits(root))
    if "validation" in splits:
        return "validation"
    if len(splits) == 1:
        return splits[0]
    raise BenchmarkError(f"{root} has several splits ({', '.join(splits)}) and none is 'validation'; choose one with --split.")


class _Shards:
    """A local split read straight from its parquet shards with pyarrow.

    Not through ``datasets.load_dataset``: its cache is keyed by the folder name and the card, not
    the files, so two folders named alike (``out/d3s`` from two runs) can silently share a stale
    cache. Label columns are read at once; image bytes on demand, one shard (~256 rows) at a time.
    """

    def __init__(self, paths: list[Path]):
        import threading

        import datasets
        import pyarrow.parquet as pq

        self.paths = paths
        self.features = datasets.Features.from_arrow_schema(pq.read_schema(paths[0]))
        self.column_names = list(self.features)
        self.counts = [pq.ParquetFile(p).metadata.num_rows for p in paths]
        self.starts = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        self._lock = threading.Lock()
        self._cache: dict[int, list] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([read_parquet(p, [name]).column(name).to_numpy() for p in self.paths]).astype(np.int64)

    def _shard_images(self, k: int) -> list:
        with self._lock:
            if k not in self._cache:
                if len(self._cache) >= 4:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[k] = read_parquet(self.paths[k], ["image"]).column("image").to_pylist()
            return self._cache[k]

    def images(self, rows: np.ndarray) -> list:
        out = []
        for r in rows.tolist():
            k = int(np.searchsorted(self.starts, r, side="right") - 1)
            cell = self._shard_images(k)[r - int(self.starts[k])]
            out.append(cell["bytes"] if cell.get("bytes") is not None else cell["path"])
        return out

    def fingerprint(self) -> str:
        stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in self.paths]
        return hashlib.sha1(repr(stats).encode()).hexdigest()[:16]


class _HubSplit:
    """The same interface over a ``datasets.Dataset`` (a Hub id)."""

    def __init__(self, ds):
        import datasets

        self.ds, self.features, self.column_names = ds, ds.features, ds.column_names
        self.raw = ds.cast_column("image", datasets.Image(decode=False)) if "image" in ds.column_names else ds

    def __len__(self) -> int:
        return len(self.ds)

    def column(self, name: str) -> np.ndarray:
        return np.asarray(self.ds.with_format("numpy", columns=[name])[name], dtype=np.int64)

    def images(self, rows: np.ndarray) -> list:
        return [r["bytes"] if r.get("bytes") is not None else r["path"] for r in self.raw.select(rows.tolist())["image"]]

    def fingerprint(self) -> str:
        return self.ds._fingerprint


def open_d3s(data: str | Path, split: str | None = None) -> ImageSet:
    """A D3S split (local folder or Hub id): its images, ``fg`` (ImageNet index) and ``bg`` labels."""
    from .labels import imagenet_classes

    root = str(data)
    local = Path(root).exists()
    if local and not Path(root).is_dir():
        raise BenchmarkError(f"--data {root} is a file; give a D3S dataset folder (made by `d3s generate`) or a Hub id.")
    split = split or (_default_split(root) if local else "validation")
    if local:
        paths = split_files(root, split)
        try:
            table = _Shards(paths)
        except Exception as err:  # unreadable shard
            raise BenchmarkError(f"Could not read the shards of split {split!r} of {root}: {type(err).__name__}: {err}") from err
    else:
        import datasets

        try:
            with _quiet_datasets():
                table = _HubSplit(datasets.load_dataset(root, split=split))
        except Exception as err:  # Hub id not found, offline
            raise BenchmarkError(f"Could not load D3S data {root!r} (split {split!r}): {type(err).__name__}: {str(err)[:300]}") from err
    where = f"split {split!r} of {root}"
    if len(table) == 0:
        raise BenchmarkError(f"Split {split!r} of {root} is empty (0 rows): nothing to benchmark.")
    if "image" not in table.column_names:
        raise BenchmarkError(f"{where} has no 'image' column (columns: {', '.join(table.column_names)}).")
    check_labels(table, where)
    fg_names = table.features["fg"].names
    ours = [c.name for c in imagenet_classes()]
    if fg_names[:1000] != ours:
        bad = next((i for i, (a, b) in enumerate(zip(fg_names, ours)) if a != b), min(len(fg_names), 1000))
        got = repr(fg_names[bad]) if bad < len(fg_names) else "nothing"
        raise BenchmarkError(
            f"The fg labels of {root} are not the ImageNet-1k classes (label {bad} is {got}, expected {ours[bad]!r}); "
            "classifiers can only be scored on D3S data whose fg labels 0..999 are ImageNet-1k."
        )
    fg, bg = table.column("fg"), table.column("bg")
    keep = np.flatnonzero(fg < 1000)  # extra WordNet concepts beyond ImageNet cannot be predicted by these models
    if len(keep) == 0:
        raise BenchmarkError(f"{where} has no image of an ImageNet-1k class (all {len(fg)} rows are other concepts).")

    def read(start: int, stop: int) -> list:
        return table.images(keep[start:stop])

    fingerprint = {"source": os.path.abspath(root) if local else root, "split": split, "rows": int(len(keep)),
                   "content": table.fingerprint()}
    group = table.column("group")[keep] if "group" in table.column_names else None
    return ImageSet("d3s", root, fg[keep], read, bg[keep], list(table.features["bg"].names), fingerprint, len(fg) - len(keep),
                    group)


class _quiet_datasets:
    """No 'Generating split' bars while loading (they would bury a one-line error)."""

    def __enter__(self):
        from datasets.utils import logging as dlog

        self.was = dlog.is_progress_bar_enabled()
        dlog.disable_progress_bar()

    def __exit__(self, *exc):
        from datasets.utils import logging as dlog

        if self.was:
            dlog.enable_progress_bar()
        return False


def _column(ds, name: str) -> np.ndarray:
    return np.asarray(ds.with_format("numpy", columns=[name])[name], dtype=np.int64)


def open_reference(spec: str | Path) -> ImageSet:
    """ImageNet val: an ImageNet-style folder ``DIR/<wnid>/*`` or a Hub dataset id (``[hf:]ORG/NAME[:split]``)
    with ``image`` and an ImageNet-1k ``label`` column."""
    from .labels import imagenet_classes

    text = str(spec)
    wnid_index = {c.wnid: i for i, c in enumerate(imagenet_classes())}
    path = Path(text)
    if path.is_dir():
        folders = sorted(p for p in path.iterdir() if p.is_dir())
        unknown = [p.name for p in folders if p.name not in wnid_index]
        if unknown:
            raise BenchmarkError(f"{text} is not an ImageNet-style folder: {len(unknown)} sub-folder(s) are not ImageNet-1k "
                                 f"WordNet ids (e.g. {unknown[0]!r}); expected {text}/<wnid>/*.JPEG.")
        files, labels = [], []
        for folder in folders:
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(str(f))
                    labels.append(wnid_index[folder.name])
        if not files:
            raise BenchmarkError(f"ImageNet folder {text} holds no images; expected {text}/<wnid>/*.JPEG.")
        digest = hashlib.sha1("|".join(os.path.relpath(f, text) for f in files).encode()).hexdigest()[:16]
        return ImageSet("imagenet", text, np.asarray(labels, dtype=np.int64), lambda a, b: files[a:b],
                        fingerprint={"source": os.path.abspath(text), "rows": len(files), "content": digest})
    if path.exists():
        raise BenchmarkError(f"ImageNet reference {text} is a file; give an ImageNet-style folder or a Hub dataset id.")
    return _hub_reference(text[3:] if text.startswith("hf:") else text)


def _hub_reference(text: str) -> ImageSet:
    import datasets

    dataset_id, _, split = text.partition(":")
    split = split or "validation"
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", dataset_id):
        raise BenchmarkError(f"ImageNet reference {text!r} is neither a folder nor a Hub dataset id (ORG/NAME[:split]).")
    try:
        with _quiet_datasets():
            ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as err:  # network, auth, a wrong id: say which
        raise BenchmarkError(f"Could not load ImageNet reference {dataset_id!r} (split {split!r}): {type(err).__name__}: {str(err)[:300]}") from err
    label = ds.features.get("label")
    if "image" not in ds.column_names or not isinstance(label, datasets.ClassLabel) or label.num_classes != 1000:
        raise BenchmarkError(f"Hub dataset {dataset_id!r} needs 'image' and a 1000-class 'label' column (ImageNet-1k order); "
                             f"it has {', '.join(ds.column_names)}.")
    if len(ds) == 0:
        raise BenchmarkError(f"Split {split!r} of {dataset_id} is empty.")
    raw = ds.cast_column("image", datasets.Image(decode=False))

    def read(start: int, stop: int) -> list:
        return [r["bytes"] if r.get("bytes") is not None else r["path"] for r in raw[start:stop]["image"]]

    return ImageSet("imagenet", text, _column(ds, "label"), read,
                    fingerprint={"source": f"hf:{dataset_id}:{split}", "rows": len(ds), "content": ds._fingerprint})


# --- 3. shared decode ------------------------------------------------------------------------------

def eval_transform(data_config: dict):
    """timm's own eval transform for this config, stopping before normalisation: PIL -> uint8 CHW array."""
    from timm.data import create_transform

    c = data_config
    return create_transform(input_size=c["input_size"], interpolation=c["interpolation"], crop_pct=c["crop_pct"],
                            crop_mode=c["crop_mode"], is_training=False, use_prefetcher=True)


def open_image(item):
    from .guides import open_rgb

    return open_rgb(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)


def decode(images: ImageSet, data_config: dict, out_path: str | Path | None = None, workers: int = 4,
           progress: bool = False) -> np.ndarray:
    """Decode and resize every image once for one preprocessing setting.

    Returns an ``(N, 3, H, W)`` uint8 array (a memory map at ``out_path`` if given, so a large split
    does not have to fit in RAM). Decoding runs in ``workers`` threads; PIL releases the GIL.
    """
    from tqdm.auto import tqdm

    transform = eval_transform(data_config)
    _, h, w = data_config["input_size"]
    shape = (len(images), 3, h, w)
    arr = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.uint8, shape=shape) if out_path else np.empty(shape, np.uint8)

    def work(start: int) -> int:
        stop = min(start + DECODE_CHUNK, len(images))
        for i, item in enumerate(images.read(start, stop)):
            arr[start + i] = transform(open_image(item))
        return stop - start

    bar = tqdm(total=len(images), unit="img", desc=f"decoding {images.name} at {h}px", disable=not progress, leave=False)
    starts = range(0, len(images), DECODE_CHUNK)
    if workers <= 1:
        for s in starts:
            bar.update(work(s))
    else:
        with ThreadPoolExecutor(workers) as pool:
            for n in pool.map(work, starts):
                bar.update(n)
    bar.close()
    return arr
