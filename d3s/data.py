"""Images (or precomputed features) and labels of a d3s dataset, as tensors for training and feature extraction.

Batches are a pure function of (seed, step): the row order of each epoch is a seeded permutation
and each batch's augmentation draws from a generator seeded by the step. So a resumed run sees
exactly the batches the uninterrupted run would have seen, and several processes can each take
their slice of the same global batch.

A *features dataset* (``d3s embed``, ``d3s toy --kind features``) has a ``features`` column (a
fixed-length list of numbers per row: a frozen backbone's features) instead of ``image``; its
:class:`FeatureTable` has :class:`ImageTable`'s interface, so batching, resume and several processes
work the same on both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .dataset import DatasetFormatError

PRELOAD_LIMIT_BYTES = 1 << 30  # decode the whole split into memory when it fits in this
FEATURES = "features"  # the column of a features dataset


@dataclass
class LabelInfo:
    fg_names: list[str]
    bg_names: list[str] | None  # None for fg-only data (ImageNet)


def label_info(ds, where: str, need_bg: bool = True) -> LabelInfo:
    """The class names of a split; refuses data without the label columns a command needs."""
    import datasets

    fg = ds.features.get("fg") or (ds.features.get("label") if not need_bg else None)
    needs = "'image' (or 'features'), 'fg' and 'bg'"
    if not isinstance(fg, datasets.ClassLabel):
        raise DatasetFormatError(f"{where} has no 'fg' ClassLabel column (columns: {', '.join(ds.column_names)}); d3s needs {needs}.")
    bg = ds.features.get("bg")
    if need_bg and not isinstance(bg, datasets.ClassLabel):
        raise DatasetFormatError(f"{where} has no 'bg' ClassLabel column (columns: {', '.join(ds.column_names)}); d3s needs {needs}.")
    if "image" not in ds.column_names and FEATURES not in ds.column_names:
        raise DatasetFormatError(f"{where} has no 'image' or 'features' column (columns: {', '.join(ds.column_names)}).")
    return LabelInfo(list(fg.names), list(bg.names) if isinstance(bg, datasets.ClassLabel) else None)


def load_split(root: str, split: str, need_bg: bool = True):
    """One split of a dataset folder (any parquet layout ``datasets`` reads) or Hub id, with a one-line error when it
    is missing or unlabelled."""
    import datasets

    from .dataset import load_raw

    datasets.disable_progress_bars()  # "Generating train split" bars would bury our own output and errors
    try:
        ds = load_raw(root, split=split)
    except (ValueError, FileNotFoundError) as err:
        if isinstance(err, DatasetFormatError):
            raise
        raise DatasetFormatError(f"cannot load split {split!r} of {root}: {str(err).splitlines()[0]}") from None
    label_info(ds, f"{root} ({split})", need_bg=need_bg)
    if is_features(ds):
        feature_dim(ds, f"{root} ({split})")
    return ds


def is_features(ds) -> bool:
    """Whether a split holds precomputed features (a ``features`` column) rather than images."""
    return FEATURES in ds.column_names


def groups_of(ds) -> torch.Tensor | None:
    """The ``group`` column of paired data (``d3s generate --paired``, ``d3s toy --kind features --paired``: the rows
    of one object), as int64; None when the split has none."""
    if "group" not in ds.column_names:
        return None
    return torch.as_tensor(np.asarray(ds.with_format("numpy", columns=["group"])[:]["group"], dtype=np.int64))


def features_column(ds):
    """The ``features`` column as Arrow (rows in the split's order, a selection's indices applied)."""
    return ds.with_format("arrow", columns=[FEATURES])[:][FEATURES]


def feature_dim(ds, where: str) -> int:
    """The length of every row of the ``features`` column; refuses a column that is not a list of
    numbers, or rows of different lengths or with missing values."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc

    feat = ds.features[FEATURES]
    inner = getattr(feat, "feature", None)
    if not isinstance(feat, (datasets.List, datasets.LargeList)) or not isinstance(inner, datasets.Value) or not (
            pa.types.is_integer(inner.pa_type) or pa.types.is_floating(inner.pa_type)):
        raise DatasetFormatError(f"{where}: the 'features' column must hold a list of numbers per row (float32), "
                                 f"got {feat}.")
    if getattr(feat, "length", -1) > 0:
        return int(feat.length)
    column = features_column(ds)
    if len(column) == 0:
        raise DatasetFormatError(f"{where} has no rows.")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if (lengths != lengths[0]).any() or column.null_count:
        other = int(np.flatnonzero(lengths != lengths[0])[0]) if (lengths != lengths[0]).any() else None
        detail = f"row 0 has {lengths[0]}, row {other} has {lengths[other]}" if other is not None else "some rows are missing"
        raise DatasetFormatError(f"{where}: the rows of the 'features' column differ in length ({detail}); "
                                 "every row needs the same number of features.")
    if pc.list_flatten(column).null_count:
        raise DatasetFormatError(f"{where}: the 'features' column has missing values.")
    return int(lengths[0])


def _to_rgb_array(img: Image.Image, size: int, box=None) -> np.ndarray:
    img = img.convert("RGB")
    if box is None and img.size != (size, size):
        # eval: resize the shorter side, centre crop (the usual eval transform)
        w, h = img.size
        s = min(w, h)
        box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
    if box is not None or img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC, box=box)
    return np.asarray(img, dtype=np.uint8)


def random_resized_box(w: int, h: int, rng: np.random.Generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)):
    """torchvision's RandomResizedCrop box, drawn from ``rng``."""
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        cw, ch = np.sqrt(target * aspect), np.sqrt(target / aspect)
        if cw <= w and ch <= h:
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            return (x0, y0, x0 + cw, y0 + ch)
    s = min(w, h)
    return ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)


def _labels(ds, fg_column: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(fg, bg) label tensors of a split; bg is -1 on fg-only data."""
    fg = torch.tensor(ds[fg_column], dtype=torch.long)
    return fg, torch.tensor(ds["bg"], dtype=torch.long) if "bg" in ds.column_names else torch.full_like(fg, -1)


def fg_column(ds) -> str:
    """``fg``, or ``label`` for ImageNet-style fg-only data."""
    return "fg" if "fg" in ds.column_names else "label"


class ImageTable:
    """The images and labels of one split, decoded on demand (or all at once when small).

    Args:
        ds (`datasets.Dataset`): a split with ``image`` and ``fg`` (and ``bg``) columns.
        size (`int`): the side images are resized to.
        fg_column (`str`, defaults to ``"fg"``): ``label`` for ImageNet-style fg-only data.
        transform (`callable`, *optional*): PIL image -> uint8 ``(3, H, W)`` array for un-augmented
            batches (a model's own preprocessing); defaults to centre crop and resize to ``size``.
    """

    def __init__(self, ds, size: int, fg_column: str = "fg", preload_limit: int = PRELOAD_LIMIT_BYTES, transform=None):
        self.ds, self.size, self.transform = ds, size, transform
        self.fg, self.bg = _labels(ds, fg_column)
        self._raw: list[Image.Image] | None = None
        w, h = ds[0]["image"].size if len(ds) else (0, 0)
        if len(ds) * w * h * 3 <= preload_limit:  # the decoded originals fit in memory: decode once
            self._raw = [im.convert("RGB") for im in ds["image"]]
            for im in self._raw:
                im.load()

    def __len__(self) -> int:
        return len(self.fg)

    def _images(self, idx: Sequence[int]) -> list[Image.Image]:
        if self._raw is not None:
            return [self._raw[i] for i in idx]
        return [im for im in self.ds.select_columns(["image"])[list(map(int, idx))]["image"]]

    def batch(self, idx: Sequence[int], seeds: Sequence | None = None, crop_scale: float = 1.0, crop_prob: float = 1.0) -> torch.Tensor:
        """uint8 (N, 3, size, size) images; with ``seeds`` (one per image), a random resized crop (with probability
        ``crop_prob``, else the whole image) and a horizontal flip."""
        if seeds is None and self.transform is not None:
            return torch.from_numpy(np.stack([self.transform(im.convert("RGB")) for im in self._images(idx)]))
        arrays = []
        for k, im in enumerate(self._images(idx)):
            if seeds is None:
                a = _to_rgb_array(im, self.size)
            else:
                rng = np.random.default_rng(seeds[k])
                cropped = crop_scale < 1.0 and rng.random() < crop_prob
                box = random_resized_box(*im.size, rng, scale=(crop_scale, 1.0)) if cropped else (0, 0, *im.size)
                a = _to_rgb_array(im, self.size, box=box)
                if rng.random() < 0.5:
                    a = a[:, ::-1]
            arrays.append(a)
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays))).permute(0, 3, 1, 2).contiguous()


class FeatureTable:
    """The precomputed features and labels of one split, in memory as float32: :class:`ImageTable`'s
    interface for a features dataset (no decoding, no augmentation).

    Args:
        ds (`datasets.Dataset`): a split with ``features`` and ``fg`` (and ``bg``) columns, checked
            by :func:`load_split`.
        fg_column (`str`, defaults to ``"fg"``): ``label`` for ImageNet-style fg-only data.
    """

    def __init__(self, ds, fg_column: str = "fg"):
        import pyarrow.compute as pc

        self.ds = ds
        self.fg, self.bg = _labels(ds, fg_column)
        column = features_column(ds)  # Arrow: no trip through Python lists
        flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
        self.x = torch.from_numpy(np.array(flat.reshape(len(column), -1), dtype=np.float32))  # a copy: Arrow's is read-only

    @property
    def dim(self) -> int:
        return self.x.shape[1]

    def __len__(self) -> int:
        return len(self.fg)

    def batch(self, idx: Sequence[int], seeds: Sequence | None = None, crop_scale: float = 1.0, crop_prob: float = 1.0) -> torch.Tensor:
        """float32 (N, D) features of rows ``idx`` (``seeds`` and the crop do not apply to features)."""
        return self.x[torch.as_tensor(np.asarray(idx, dtype=np.int64))]


def table_for(ds, model=None, size: int | None = None, fg_column: str = "fg"):
    """The table a model reads a split through: a :class:`FeatureTable` for a features dataset, else an
    :class:`ImageTable` at the model's input size, with its own preprocessing when it records one."""
    if is_features(ds):
        return FeatureTable(ds, fg_column)
    transform = model.input_transform() if hasattr(model, "input_transform") else None
    return ImageTable(ds, size or model.image_size, fg_column=fg_column, transform=transform)


class SeededBatches(torch.utils.data.Dataset):
    """Item ``step`` is the training batch of that step: a pure function of (seed, step).

    Give it to a ``DataLoader(batch_size=None)`` with workers to decode ahead of the model.
    """

    def __init__(self, table: ImageTable | FeatureTable, batch_size: int, seed: int, crop_scale: float, extra=None,
                 extra_batch_size: int = 0, rank: int = 0, world: int = 1, crop_prob: float = 1.0):
        if len(table) < batch_size:
            raise DatasetFormatError(f"the train split has {len(table)} rows, fewer than --batch-size {batch_size}.")
        self.table, self.batch_size, self.seed, self.crop_scale, self.crop_prob = table, batch_size, seed, crop_scale, crop_prob
        self.extra, self.extra_batch_size = extra, extra_batch_size
        self.rank, self.world = rank, world
        self.steps: range = range(0)

    def __len__(self) -> int:
        return len(self.steps)

    @staticmethod
    def _indices(n: int, batch_size: int, seed: int, step: int, stream: int) -> np.ndarray:
        per_epoch = n // batch_size
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, stream, epoch]).permutation(n)
        return perm[k * batch_size : (k + 1) * batch_size]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        step = self.steps[i]
        mine = slice(self.rank, None, self.world)  # this process's share of the global batch
        idx = self._indices(len(self.table), self.batch_size, self.seed, step, 0)[mine]
        # each image's augmentation is keyed by (seed, step, its place in the global batch), so a
        # batch is augmented the same whatever the number of processes
        seeds = [[self.seed, 1, step, k] for k in range(self.batch_size)][mine]
        images, fg, bg = self.table.batch(idx, seeds, self.crop_scale, self.crop_prob), self.table.fg[idx], self.table.bg[idx]
        if self.extra is not None and self.extra_batch_size:
            eidx = self._indices(len(self.extra), self.extra_batch_size, self.seed, step, 2)[mine]
            eseeds = [[self.seed, 3, step, k] for k in range(self.extra_batch_size)][mine]
            images = torch.cat([images, self.extra.batch(eidx, eseeds, self.crop_scale, self.crop_prob)])
            fg = torch.cat([fg, self.extra.fg[eidx]])
            bg = torch.cat([bg, torch.full((len(eidx),), -1, dtype=torch.long)])  # no bg label: masked out of bg terms
        return {"images": images, "fg": fg, "bg": bg, "step": torch.tensor(step)}


@torch.no_grad()
def extract(model, table: ImageTable | FeatureTable, batch_size: int = 256, device: str | torch.device = "cpu", progress: bool = False) -> torch.Tensor:
    """All features z (N, D) of a table, model in eval mode, float32 on the CPU."""
    from tqdm.auto import tqdm

    model.eval()
    out = []
    starts = range(0, len(table), batch_size)
    for s in tqdm(starts, desc="features", disable=not progress, leave=False):
        x = table.batch(range(s, min(s + batch_size, len(table)))).to(device)
        with torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=torch.device(device).type == "cuda"):
            z = model(x)
        out.append(z.float().cpu())
    return torch.cat(out)
