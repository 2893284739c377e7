"""Browsing a D3S dataset for the app: a grid by class and background, and the human-review queue.

Plain functions and one small class, no UI code: the app's Dataset and Review tabs call these. Images are
decoded from the bytes stored in the dataset only, under the upload caps (:func:`d3s.live.decode_stored`): a
row whose image is a path or an address is skipped, never followed.

A request costs the same on a dataset of 1,000 rows as on one of 100,000: the labels are read once, as arrays, when a
split is opened, and indexed by class, by background and by (class, background); the review queue keeps, per
reviewer, the answers it has read and where the first unanswered row is, and reads only the answers stored since.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .dataset import DatasetFormatError, check_labels, load_raw
from .live import UploadError, decode_stored

IMAGE_COLUMNS = ("image", "guide")


class DatasetView:
    """One split of a local dataset folder (any layout ``datasets`` reads), indexed by (fg, bg).

    ``fg``, ``bg`` and ``item_ids`` are int64 arrays over the split's rows (a missing label is -1; a split without
    ``item_id`` numbers its rows).

    Args:
        folder (`str`): the dataset folder (a Hub dataset is downloaded first, e.g. by ``local_folder``).
        split (`str`, *optional*): defaults to ``benchmark`` when there is one, else the first split.
        cache_dir (`str`, *optional*): where ``datasets`` keeps its Arrow copy (the app uses a folder of its own,
            removed when it exits).
    """

    def __init__(self, folder: str, split: str | None = None, cache_dir: str | None = None):
        import datasets

        try:
            dd = load_raw(folder, cache_dir=cache_dir)
        except Exception as err:  # not a dataset, unreadable shards: say which
            raise DatasetFormatError(f"Could not load dataset {folder!r}: {str(err).splitlines()[0][:200]}") from err
        self.splits = list(dd)
        self.split = split if split in dd else ("benchmark" if "benchmark" in dd else self.splits[0])
        ds = dd[self.split]
        check_labels(ds, folder)
        for col in IMAGE_COLUMNS:  # cells stay {"bytes", "path"}: nothing is opened by path
            if col in ds.column_names:
                ds = ds.cast_column(col, datasets.Image(decode=False))
        self.ds = ds
        self._images = ds.select_columns(["image"]) if "image" in ds.column_names else ds
        self.fg_names = ds.features["fg"].names
        self.bg_names = ds.features["bg"].names
        columns = [c for c in ("item_id", "fg", "bg") if c in ds.column_names]
        labels = ds.select_columns(columns).with_format("arrow")[:]  # the three columns at once, never row by row
        self.fg, self.bg = _int_array(labels.column("fg")), _int_array(labels.column("bg"))
        self.item_ids = _int_array(labels.column("item_id")) if "item_id" in columns else np.arange(len(self.fg), dtype=np.int64)
        self._fg_present = sorted(int(f) for f in np.unique(self.fg) if f >= 0)
        self._class_choices = [f"{self.fg_names[i]} ({i})" for i in self._fg_present]
        self._class_choice_set = frozenset(self._class_choices)
        self.class_count, self.background_count = len(np.unique(self.fg)), len(np.unique(self.bg))
        self._index: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._ids: tuple[np.ndarray, np.ndarray] | None = None
        self._id_set: frozenset[int] | None = None
        self._queues: dict[tuple, _ReviewQueue] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.fg)

    def classes_present(self) -> list[str]:
        return list(self._class_choices)

    def has_class_choice(self, choice: str) -> bool:
        """Whether ``choice`` is one of :meth:`classes_present` (``'name (index)'``)."""
        return choice in self._class_choice_set

    def _sorted_by(self, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(row order, keys in that order) for ``fg``, ``bg`` or ``cell`` (fg and bg), rows in dataset order within a key."""
        with self._lock:
            if what not in self._index:
                keys = {"fg": self.fg, "bg": self.bg, "cell": self.fg * (len(self.bg_names) + 1) + self.bg}[what]
                order = np.argsort(keys, kind="stable")
                self._index[what] = order, keys[order]
            return self._index[what]

    def rows(self, fg: int | None = None, bg: int | None = None, limit: int = 60) -> list[int]:
        """Row indices matching a class and/or background, in dataset order."""
        if fg is None and bg is None:
            return list(range(min(limit, len(self))))
        if fg is not None and bg is not None:
            if not (0 <= bg < len(self.bg_names)):
                return []
            what, key = "cell", fg * (len(self.bg_names) + 1) + bg
        else:
            what, key = ("fg", fg) if fg is not None else ("bg", bg)
        order, keys = self._sorted_by(what)
        lo, hi = np.searchsorted(keys, key, "left"), np.searchsorted(keys, key, "right")
        return order[lo : min(hi, lo + max(0, limit))].tolist()

    def gallery(self, fg: int | None = None, bg: int | None = None, limit: int = 60) -> tuple[list[tuple], int]:
        """(image, caption) pairs for a gallery (the chosen class across backgrounds, or a background across
        classes), and how many matching rows were left out because their image could not be shown."""
        items, skipped = [], 0
        rows = self.rows(fg, bg, limit)
        cells = self._images[rows]["image"] if rows else []
        for i, cell in zip(rows, cells):
            try:
                items.append((decode_stored(cell), f"{_name(self.fg_names, self.fg[i])} / {_name(self.bg_names, self.bg[i])}"))
            except UploadError:
                skipped += 1
        return items, skipped

    def record(self, row: int) -> dict:
        return self.ds[row]

    def row_of_item(self, item_id: int) -> int:
        """The first row holding ``item_id``; ``ValueError`` if none does."""
        with self._lock:
            if self._ids is None:
                order = np.argsort(self.item_ids, kind="stable")
                self._ids = order, self.item_ids[order]
            order, ids = self._ids
        k = int(np.searchsorted(ids, item_id))
        if k == len(ids) or ids[k] != item_id:
            raise ValueError(f"{item_id} is not an item of this split")
        return int(order[k])

    def item_id_set(self) -> frozenset[int]:
        """The split's item ids, as a set (made once, shared by the review queues)."""
        with self._lock:
            if self._id_set is None:
                self._id_set = frozenset(self.item_ids.tolist())
            return self._id_set

    def review_queue(self, store, dataset: str, reviewer: str) -> "_ReviewQueue":
        """This split's queue for one reviewer of ``dataset`` in ``store`` (kept: later requests read only new answers)."""
        path = Path(store.path)
        try:
            stat = path.stat()
            where = (str(path.resolve()), stat.st_dev, stat.st_ino)  # a file replaced under the same name is another store
        except OSError:
            where = (str(path), None, None)
        key = (*where, dataset, reviewer)
        with self._lock:
            if key not in self._queues:
                if len(self._queues) >= 64:  # reviewers come and go: keep the latest
                    self._queues.pop(next(iter(self._queues)))
                self._queues[key] = _ReviewQueue(self)
            return self._queues[key]


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else "?"  # -1: a row without this label


def _int_array(column) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count:
        column = pc.fill_null(column, -1)
    return column.cast(pa.int64()).to_numpy()


class _ReviewQueue:
    """One reviewer's progress through a split: the answered items read so far, how many of the split's items they
    are, and the first row whose item is not answered (it only moves on: answers are never removed)."""

    def __init__(self, view: DatasetView):
        self.view = view
        self.position = 0  # in the store's rows (ReviewStore.answered_since)
        self.answered: set[int] = set()
        self.done = 0  # distinct items of the split among them
        self.cursor = 0  # every row before it is answered
        self.lock = threading.Lock()

    def next(self, store, dataset: str, reviewer: str) -> tuple[int | None, int]:
        """(the next unanswered item id or None, how many of the split's items this reviewer answered)."""
        with self.lock:
            ids, end = store.answered_since(dataset, reviewer, self.position)
            if end < 0:  # the store was rebuilt: read it again from the start
                self.position, self.answered, self.done, self.cursor = 0, set(), 0, 0
                ids, end = store.answered_since(dataset, reviewer, 0)
            self.position = end
            fresh = {int(i) for i in ids} - self.answered
            if fresh:
                self.answered |= fresh
                self.done += len(fresh & self.view.item_id_set())
            item_ids = self.view.item_ids
            while self.cursor < len(item_ids) and int(item_ids[self.cursor]) in self.answered:
                self.cursor += 1
            return (int(item_ids[self.cursor]) if self.cursor < len(item_ids) else None), self.done


@lru_cache(maxsize=4)
def open_view(folder: str, split: str | None = None, cache_dir: str | None = None) -> DatasetView:
    return DatasetView(folder, split, cache_dir)


@dataclass
class ReviewCard:
    """What a reviewer sees for one image."""

    item_id: int
    image: object
    guide: object | None
    title: str
    definition: str
    prompt: str
    progress: str


def next_review(view: DatasetView, store, dataset: str, reviewer: str) -> ReviewCard | None:
    """The next image this reviewer has not answered in ``dataset`` (the review store's key of the view's
    dataset), with its class name, definition and guide. Raises ``UploadError`` when the image cannot be shown.

    The first request of a reviewer reads their answers; later ones read only the answers stored since (by the app,
    or by ``d3s review add`` in another process)."""
    from .labels import imagenet_classes

    item, done = view.review_queue(store, dataset, reviewer).next(store, dataset, reviewer)
    if item is None:
        return None
    rec = view.record(view.row_of_item(item))
    fg = rec["fg"]
    classes = imagenet_classes()
    definition = classes[fg].definition if fg < len(classes) else ""
    guide = rec.get("guide")
    try:
        guide = decode_stored(guide) if guide is not None else None
    except UploadError:
        guide = None  # the guide is a help, not the question
    return ReviewCard(
        item_id=item, image=decode_stored(rec["image"]), guide=guide,
        title=f"{view.fg_names[fg]} / {view.bg_names[rec['bg']]}", definition=definition, prompt=rec.get("prompt", ""),
        progress=f"{done} of {len(view)} reviewed by {reviewer}",
    )
