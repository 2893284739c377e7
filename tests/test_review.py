"""The review store: the paper's consensus rule, and no answer lost to concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

from d3s.review import Review, ReviewError, ReviewStore, consensus


def r(present: bool, unsafe: bool = False, who: str = "a") -> Review:
    return Review(0, who, present, unsafe, 0.0)


@pytest.mark.parametrize("reviews,unanimous,majority", [
    ([], False, False),  # unreviewed: not in a reviewed benchmark
    ([r(True)], True, True),
    ([r(True), r(True, who="b")], True, True),
    ([r(True), r(False, who="b")], False, False),  # a tie is not a majority
    ([r(True), r(True, who="b"), r(False, who="c")], False, True),
    ([r(True), r(True, True, who="b"), r(True, who="c")], False, False),  # any unsafe flag removes it
    ([r(False, True)], False, False),
])
def test_consensus_rules(reviews, unanimous, majority):
    assert consensus(reviews, "unanimous") is unanimous
    assert consensus(reviews, "majority") is majority


def test_unknown_rule_is_refused():
    with pytest.raises(ReviewError, match="unanimous, majority"):
        consensus([r(True)], "vibes")


def test_answers_replace_and_export(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    store.add(1, "ann", True, False)
    store.add(1, "bob", True, False)
    store.add(2, "ann", False, False)
    store.add(2, "ann", True, False)  # ann changes her mind
    store.add(3, "bob", True, True)
    assert len(store.reviews()) == 4
    cols = store.export_columns([1, 2, 3, 4])
    assert cols["review_keep"] == [True, True, False, None]
    assert cols["review_count"] == [2, 1, 1, 0] and cols["review_unsafe"] == [0, 0, 1, 0]
    assert store.next_item([1, 2, 3, 4], "ann") == 3
    # Reviews survive a restart: a new store object on the same file sees them.
    assert len(ReviewStore(tmp_path / "reviews.sqlite").reviews()) == 4
    with pytest.raises(ReviewError, match="reviewer name"):
        store.add(5, "  ", True, False)


def _write_many(path: str, reviewer: str, n: int) -> None:
    store = ReviewStore(path)
    for i in range(n):
        store.add(i, reviewer, i % 3 != 0, i % 7 == 0)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "reviews.sqlite")
    ReviewStore(path)
    n = 150
    threads = [threading.Thread(target=_write_many, args=(path, f"thread{k}", n)) for k in range(3)]
    procs = [mp.get_context("spawn").Process(target=_write_many, args=(path, f"proc{k}", n)) for k in range(2)]
    for t in threads + procs:
        t.start()
    for t in threads + procs:
        t.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    reviews = ReviewStore(path).reviews()
    assert len(reviews) == 5 * n
    assert {(x.item_id, x.reviewer) for x in reviews} == {(i, w) for i in range(n) for w in
                                                         ["thread0", "thread1", "thread2", "proc0", "proc1"]}
