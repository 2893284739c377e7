"""Browsing a D3S dataset for the app: a grid by class and background, and the human-review queue.

Plain functions and one small class, no UI code: the app's Dataset and Review tabs call these. Images are
decoded from the bytes stored in the dataset only, under the upload caps (:func:`d3s.live.decode_stored`): a
row whose image is a path or an address is skipped, never followed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .dataset import DatasetFormatError, check_labels, load_raw
from .live import UploadError, decode_stored

IMAGE_COLUMNS = ("image", "guide")


class DatasetView:
    """One split of a local dataset folder (any layout ``datasets`` reads), indexed by (fg, bg).

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
        self.fg_names = ds.features["fg"].names
        self.bg_names = ds.features["bg"].names
        self.fg = list(ds["fg"])
        self.bg = list(ds["bg"])
        self.item_ids = list(ds["item_id"]) if "item_id" in ds.column_names else list(range(len(self.fg)))

    def __len__(self) -> int:
        return len(self.fg)

    def classes_present(self) -> list[str]:
        return [f"{self.fg_names[i]} ({i})" for i in sorted(set(self.fg))]

    def rows(self, fg: int | None = None, bg: int | None = None, limit: int = 60) -> list[int]:
        """Row indices matching a class and/or background, in dataset order."""
        out = [i for i, (f, b) in enumerate(zip(self.fg, self.bg)) if (fg is None or f == fg) and (bg is None or b == bg)]
        return out[:limit]

    def gallery(self, fg: int | None = None, bg: int | None = None, limit: int = 60) -> tuple[list[tuple], int]:
        """(image, caption) pairs for a gallery (the chosen class across backgrounds, or a background across
        classes), and how many matching rows were left out because their image could not be shown."""
        items, skipped = [], 0
        for i in self.rows(fg, bg, limit):
            try:
                items.append((decode_stored(self.ds[i]["image"]), f"{self.fg_names[self.fg[i]]} / {self.bg_names[self.bg[i]]}"))
            except UploadError:
                skipped += 1
        return items, skipped

    def record(self, row: int) -> dict:
        return self.ds[row]

    def row_of_item(self, item_id: int) -> int:
        return self.item_ids.index(item_id)


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
    dataset), with its class name, definition and guide. Raises ``UploadError`` when the image cannot be shown."""
    from .labels import imagenet_classes

    item = store.next_item(dataset, view.item_ids, reviewer)
    done = len(store.reviewed_by(dataset, reviewer) & set(view.item_ids))
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
