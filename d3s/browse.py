"""Browsing a D3S dataset for the app: a grid by class and background, and the human-review queue.

Plain functions and one small class, no UI code: the app's Dataset and Review tabs call these.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .dataset import DatasetFormatError, check_labels, load_raw


class DatasetView:
    """One split of a d3s folder or Hub dataset, indexed by (fg, bg)."""

    def __init__(self, source: str, split: str | None = None):
        try:
            dd = load_raw(source)
        except Exception as err:  # a wrong path or id, no network: say which
            raise DatasetFormatError(f"Could not load dataset {source!r}: {str(err).splitlines()[0][:200]}") from err
        self.splits = list(dd)
        self.split = split if split in dd else ("benchmark" if "benchmark" in dd else self.splits[0])
        self.ds = dd[self.split]
        check_labels(self.ds, source)
        self.source = source
        self.fg_names = self.ds.features["fg"].names
        self.bg_names = self.ds.features["bg"].names
        self.fg = list(self.ds["fg"])
        self.bg = list(self.ds["bg"])
        self.item_ids = list(self.ds["item_id"]) if "item_id" in self.ds.column_names else list(range(len(self.fg)))

    def __len__(self) -> int:
        return len(self.fg)

    def classes_present(self) -> list[str]:
        return [f"{self.fg_names[i]} ({i})" for i in sorted(set(self.fg))]

    def rows(self, fg: int | None = None, bg: int | None = None, limit: int = 60) -> list[int]:
        """Row indices matching a class and/or background, in dataset order."""
        out = [i for i, (f, b) in enumerate(zip(self.fg, self.bg)) if (fg is None or f == fg) and (bg is None or b == bg)]
        return out[:limit]

    def gallery(self, fg: int | None = None, bg: int | None = None, limit: int = 60) -> list[tuple]:
        """(image, caption) pairs for a gallery: the chosen class across backgrounds, or a background across classes."""
        return [(self.ds[i]["image"], f"{self.fg_names[self.fg[i]]} / {self.bg_names[self.bg[i]]}")
                for i in self.rows(fg, bg, limit)]

    def record(self, row: int) -> dict:
        return self.ds[row]

    def row_of_item(self, item_id: int) -> int:
        return self.item_ids.index(item_id)


@lru_cache(maxsize=4)
def open_view(source: str, split: str | None = None) -> DatasetView:
    return DatasetView(source, split)


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


def next_review(view: DatasetView, store, reviewer: str) -> ReviewCard | None:
    """The next image this reviewer has not answered, with its class name, definition and guide."""
    from .labels import imagenet_classes

    item = store.next_item(view.item_ids, reviewer)
    done = len(store.reviewed_by(reviewer) & set(view.item_ids))
    if item is None:
        return None
    rec = view.record(view.row_of_item(item))
    fg = rec["fg"]
    classes = imagenet_classes()
    definition = classes[fg].definition if fg < len(classes) else ""
    return ReviewCard(
        item_id=item, image=rec["image"], guide=rec.get("guide"),
        title=f"{view.fg_names[fg]} / {view.bg_names[rec['bg']]}", definition=definition, prompt=rec.get("prompt", ""),
        progress=f"{done} of {len(view)} reviewed by {reviewer}",
    )
