"""The app's Dataset and Review tabs' engine (d3s.browse): indexed lookups give what a scan of every row gives, and the
review queue, which reads only the answers stored since its last request, gives what reading every answer gives."""

from __future__ import annotations

import io
import sqlite3

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from d3s.browse import DatasetView, next_review
from d3s.review import LEGACY, ReviewStore


def _png(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="PNG")
    return buf.getvalue()


def _shuffled(root, missing_labels: bool):
    """A split whose rows are in no particular order: item ids shuffled, classes and backgrounds drawn at random,
    item id 7 on two rows (and, with ``missing_labels``, two rows without a label)."""
    import datasets

    from d3s.dataset import write_table

    rng = np.random.default_rng(0)
    n = 300
    fg = rng.integers(0, 5, n).tolist()
    bg = rng.integers(0, 4, n).tolist()
    if missing_labels:
        fg[3] = bg[4] = None
    ids = rng.permutation(1000)[:n].tolist()
    ids[10] = ids[20] = 7
    feats = datasets.Features({"item_id": datasets.Value("int64"), "image": datasets.Image(),
                               "fg": datasets.ClassLabel(names=[f"c{i}" for i in range(6)]),
                               "bg": datasets.ClassLabel(names=[f"b{i}" for i in range(4)]),
                               "prompt": datasets.Value("string")})
    rows = [{"item_id": i, "image": {"bytes": _png(((f or 0) * 40, (b or 0) * 60, 0)), "path": None}, "fg": f, "bg": b,
             "prompt": f"row {k}"} for k, (i, f, b) in enumerate(zip(ids, fg, bg))]
    write_table(root, "train", pa.Table.from_pylist(rows, schema=feats.arrow_schema))
    return DatasetView(str(root), cache_dir=str(root / "cache")), {"fg": fg, "bg": bg, "ids": ids}


@pytest.fixture(scope="module")
def shuffled(tmp_path_factory):
    return _shuffled(tmp_path_factory.mktemp("shuffled"), missing_labels=True)


def test_lookups_match_a_scan_of_every_row(shuffled):
    view, raw = shuffled
    fg = [-1 if f is None else f for f in raw["fg"]]
    bg = [-1 if b is None else b for b in raw["bg"]]

    def scan(f, b, limit):
        return [i for i in range(len(fg)) if (f is None or fg[i] == f) and (b is None or bg[i] == b)][:limit]

    for f in (None, 0, 1, 4, 5, 9):
        for b in (None, 0, 3, 4):
            for limit in (0, 1, 7, 60, 1000):
                assert view.rows(f, b, limit) == scan(f, b, limit), (f, b, limit)
    assert view.fg.tolist() == fg and view.bg.tolist() == bg and view.item_ids.tolist() == raw["ids"]
    assert view.classes_present() == [f"c{i} ({i})" for i in sorted(set(fg) - {-1})]
    assert view.has_class_choice("c2 (2)") and not view.has_class_choice("c5 (5)") and not view.has_class_choice("c2")
    assert (view.class_count, view.background_count) == (len(set(fg)), len(set(bg)))
    for k in (0, 10, 20, 299):
        assert view.row_of_item(raw["ids"][k]) == raw["ids"].index(raw["ids"][k])  # the first row of a repeated id
    with pytest.raises(ValueError):
        view.row_of_item(1000)
    items, skipped = view.gallery(2, 1)
    assert skipped == 0 and [caption for _, caption in items] == ["c2 / b1"] * len(scan(2, 1, 60))
    assert np.asarray(items[0][0])[0, 0].tolist() == [80, 60, 0]
    captions = [caption for _, caption in view.gallery(limit=5)[0]]  # rows 3 and 4 lack a class, a background
    assert captions[3] == f"? / b{bg[3]}" and captions[4] == f"c{fg[4]} / ?"


def _naive(view, store, key, reviewer):
    """What next_review answered before it kept a queue: every answer read, every row scanned."""
    ids = view.item_ids.tolist()
    return store.next_item(key, ids, reviewer), len(store.reviewed_by(key, reviewer) & set(ids))


def _agrees(view, store, key, reviewer):
    item, done = _naive(view, store, key, reviewer)
    card = next_review(view, store, key, reviewer)
    got = (None, None) if card is None else (card.item_id, int(card.progress.split(" of ")[0]))
    assert got == (item, None if item is None else done), (got, item, done)
    return item


def test_review_queue_reads_only_new_answers_and_agrees_with_reading_them_all(tmp_path):
    view, raw = _shuffled(tmp_path / "data", missing_labels=False)
    key, ids = "k" * 16, raw["ids"]
    path = tmp_path / "reviews.sqlite"
    app, cli = ReviewStore(path), ReviewStore(path)  # the app's store, and another writer (`d3s review add`)
    assert _agrees(view, app, key, "ann") == ids[0]
    for k in range(5):  # answered in the app, in order
        app.add(key, ids[k], "ann", True, False)
        assert _agrees(view, app, key, "ann") == ids[k + 1]
    cli.add(key, ids[6], "ann", False, False)  # out of order, from another process
    cli.add(key, ids[5], "ann", True, True)
    cli.add(key, 5000, "ann", True, False)  # an item outside this split (e.g. its train rows, same key)
    cli.add("o" * 16, ids[7], "ann", True, False)  # another dataset's item with the same id: not this one's
    cli.add(key, ids[7], "bob", True, False)  # another reviewer
    app.add(key, ids[2], "ann", False, False)  # a changed answer
    assert _agrees(view, app, key, "ann") == ids[7]
    with sqlite3.connect(path) as db:  # a legacy answer (stored before answers were keyed) counts for every dataset
        db.execute("INSERT INTO reviews VALUES (?, ?, ?, 1, 0, 0)", (LEGACY, ids[7], "ann"))
    assert _agrees(view, app, key, "ann") == ids[8]
    assert _agrees(view, app, key, "bob") == ids[0]
    for i in ids:  # the item id 7 is on two rows: the count is of items
        app.add(key, i, "ann", True, False)
    assert _agrees(view, app, key, "ann") is None
    with sqlite3.connect(path) as db:  # emptied by hand (the store itself never removes an answer): read again
        db.execute("DELETE FROM reviews")
    app.add(key, ids[0], "ann", True, False)
    assert _agrees(view, app, key, "ann") == ids[1]
    path.unlink()  # the store rebuilt under the same name: the queue starts again
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    fresh = ReviewStore(path)
    fresh.add(key, ids[0], "ann", True, False)
    assert _agrees(view, fresh, key, "ann") == ids[1]


def test_answered_since_reads_in_pieces(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    key = "k" * 16
    assert store.answered_since(key, "ann") == ([], 0)
    store.add(key, 3, "ann", True, False)
    store.add(key, 4, "bob", True, False)
    ids, pos = store.answered_since(key, " ann ")
    assert ids == [3] and pos == 2
    store.add(key, 9, "ann", True, False)
    store.add(key, 3, "ann", False, False)  # replaced: may come again, never lost
    more, pos2 = store.answered_since(key, "ann", pos)
    assert 9 in more and set(more) <= {3, 9} and pos2 > pos
    assert store.answered_since(key, "ann", pos2) == ([], pos2)
    assert store.answered_since(key, "ann", pos2 + 10) == ([], -1)  # past the end: the file was rebuilt
