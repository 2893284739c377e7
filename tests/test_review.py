"""The review store: the paper's consensus rule, and no answer lost to concurrent writers."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sqlite3
import threading

import pytest

from d3s.review import Review, ReviewError, ReviewStore, consensus, dataset_key

D = "d" * 16  # a dataset key


def r(present: bool, unsafe: bool = False, who: str = "a") -> Review:
    return Review(D, 0, who, present, unsafe, 0.0)


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
    store.add(D, 1, "ann", True, False)
    store.add(D, 1, "bob", True, False)
    store.add(D, 2, "ann", False, False)
    store.add(D, 2, "ann", True, False)  # ann changes her mind
    store.add(D, 3, "bob", True, True)
    assert len(store.reviews()) == 4 and len(store.reviews(D)) == 4 and len(store.reviews(D, 1)) == 2
    cols = store.export_columns(D, [1, 2, 3, 4])
    assert cols["review_keep"] == [True, True, False, None]
    assert cols["review_count"] == [2, 1, 1, 0] and cols["review_unsafe"] == [0, 0, 1, 0]
    assert store.next_item(D, [1, 2, 3, 4], "ann") == 3
    assert store.reviewed_by(D, "ann") == {1, 2}
    # Reviews survive a restart: a new store object on the same file sees them.
    assert len(ReviewStore(tmp_path / "reviews.sqlite").reviews()) == 4
    with pytest.raises(ReviewError, match="reviewer name"):
        store.add(D, 5, "  ", True, False)


def test_two_datasets_in_one_store_do_not_collide(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    a, b = "a" * 16, "b" * 16
    store.add(a, 3, "ann", True, False)
    store.add(b, 3, "ann", False, True)  # same item id and reviewer, another dataset
    assert len(store.reviews()) == 2 and store.datasets() == [a, b]
    assert [x.dataset for x in store.reviews(a)] == [a] and store.reviews(a)[0].object_present
    assert store.verdicts(a)[3].keep and not store.verdicts(b)[3].keep
    assert store.export_columns(b, [3])["review_unsafe"] == [1]
    assert store.next_item(a, [3, 4], "ann") == 4 and store.reviewed_by(b, "ann") == {3}
    assert store.reviews("c" * 16) == [] and store.reviewed_by("c" * 16, "ann") == set()
    with pytest.raises(ReviewError, match="2 datasets"):
        store.verdicts(None)  # item ids of two datasets would be pooled
    with pytest.raises(ReviewError, match="dataset"):
        store.add("", 3, "ann", True, False)
    with pytest.raises(ReviewError, match="at most 64"):
        store.add("x" * 65, 3, "ann", True, False)
    for bad in (-1, 2**62 + 1, 1.5, "3", True):
        with pytest.raises(ReviewError, match="item_id"):
            store.add(a, bad, "ann", True, False)
    assert len(store.reviews()) == 2


def test_old_store_is_migrated_and_its_answers_apply_to_a_keyed_dataset(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the schema before answers were keyed by dataset
        db.execute("CREATE TABLE reviews (item_id INTEGER NOT NULL, reviewer TEXT NOT NULL, "
                   "object_present INTEGER NOT NULL CHECK (object_present IN (0, 1)), "
                   "unsafe INTEGER NOT NULL CHECK (unsafe IN (0, 1)), answered_at REAL NOT NULL, "
                   "PRIMARY KEY (item_id, reviewer))")
        db.executemany("INSERT INTO reviews VALUES (?, ?, ?, ?, ?)",
                       [(1, "ann", 1, 0, 1.0), (2, "ann", 0, 0, 1.0), (2, "bob", 1, 0, 1.0)])
    db.close()
    store = ReviewStore(path)
    assert {(x.dataset, x.item_id, x.reviewer) for x in store.reviews()} == {("", 1, "ann"), ("", 2, "ann"), ("", 2, "bob")}
    assert ReviewStore(path).datasets() == [""]  # opening it again changes nothing
    # The legacy answers count for whichever dataset is asked for...
    assert store.reviewed_by(D, "ann") == {1, 2} and store.next_item(D, [1, 2, 3], "ann") == 3
    assert store.export_columns(D, [1, 2, 3])["review_keep"] == [True, False, None]
    assert store.verdicts(None)[1].keep
    # ... unless the same reviewer answered the same item under that dataset's key: that answer wins.
    store.add(D, 2, "ann", True, False)
    assert {(x.dataset, x.item_id, x.reviewer) for x in store.reviews(D)} == {("", 1, "ann"), (D, 2, "ann"), ("", 2, "bob")}
    assert store.export_columns(D, [1, 2, 3])["review_keep"] == [True, True, None]
    assert store.verdicts("e" * 16)[2].keep is False  # another dataset still sees ann's legacy "no"
    assert len(store.reviews()) == 4
    with sqlite3.connect(path) as db:
        assert [r[1] for r in db.execute("PRAGMA table_info(reviews)")][0] == "dataset"
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def _open(path: str) -> None:
    ReviewStore(path)


def test_two_processes_migrate_an_old_store_at_once(tmp_path):
    path = str(tmp_path / "old.sqlite")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE reviews (item_id INTEGER NOT NULL, reviewer TEXT NOT NULL, object_present INTEGER NOT NULL, "
                   "unsafe INTEGER NOT NULL, answered_at REAL NOT NULL, PRIMARY KEY (item_id, reviewer))")
        db.executemany("INSERT INTO reviews VALUES (?, 'ann', 1, 0, 0.0)", [(i,) for i in range(500)])
    db.close()
    procs = [mp.get_context("spawn").Process(target=_open, args=(path,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    assert len(ReviewStore(path).reviews(D)) == 500


@pytest.mark.parametrize("name", ["", "   ", "a/b", "a b", "x" * 65, "x" * (5 * 2**20)])
def test_reviewer_names_are_checked(tmp_path, name):
    path = tmp_path / "reviews.sqlite"
    store = ReviewStore(path)
    with pytest.raises(ReviewError) as err:
        store.add(D, 1, name, True, False)
    assert "letters, digits" in str(err.value) and len(str(err.value)) < 200  # says what is allowed, echoes nothing
    assert store.reviews() == []
    assert sum(f.stat().st_size for f in tmp_path.iterdir()) < 2**20  # the 5 MiB name never reached the file


def test_reviewer_names_allowed(tmp_path):
    store = ReviewStore(tmp_path / "reviews.sqlite")
    assert store.add(D, 1, "  ann.lee_2@lab-x ", True, False).reviewer == "ann.lee_2@lab-x"
    assert store.add(D, 1, "x" * 64, True, False).reviewer == "x" * 64
    assert store.reviewed_by(D, " ann.lee_2@lab-x") == {1}


def test_dataset_key_is_shared_by_a_folder_and_its_split(tiny_run, tmp_path):
    from d3s.curate import split

    key = dataset_key(tiny_run)
    assert len(key) == 16 and int(key, 16) >= 0
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    assert dataset_key(copy) == key  # where the folder is does not matter
    split(tiny_run, tmp_path / "splits", fraction=0.5)
    assert dataset_key(tmp_path / "splits") == key  # train + validation (+ benchmark, a subset) = the source's rows
    # Another dataset: one row fewer.
    import pyarrow.parquet as pq
    from d3s.dataset import find_splits

    shard = find_splits(copy)["train"][0]
    table = pq.read_table(shard)
    pq.write_table(table.slice(1), shard)
    assert dataset_key(copy) != key


def _write_many(path: str, reviewer: str, n: int) -> None:
    store = ReviewStore(path)
    for i in range(n):
        store.add(D, i, reviewer, i % 3 != 0, i % 7 == 0)


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


def test_review_cli_keys_answers_by_the_data_folder(tmp_path, capsys):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import run_main

    folders = []
    for name, n in (("a", 4), ("b", 5)):
        (tmp_path / name / "data").mkdir(parents=True)
        pq.write_table(pa.table({"item_id": list(range(n)), "fg": [0] * n, "bg": [1] * n}),
                       tmp_path / name / "data" / f"train-00000000-{n - 1:08d}.parquet")
        folders.append(str(tmp_path / name))
    store = str(tmp_path / "reviews.sqlite")
    code, err = run_main(capsys, "review", "add", "--store", store, "--item", "3", "--reviewer", "ann", "--present", "yes")
    assert code != 0 and "needs --data" in err[-1]
    for folder, present in zip(folders, ("yes", "no")):
        code, err = run_main(capsys, "review", "add", "--store", store, "--data", folder, "--item", "3", "--reviewer", "ann",
                             "--present", present)
        assert code == 0, err
    code, err = run_main(capsys, "review", "add", "--store", store, "--data", folders[0], "--item", "3", "--reviewer", "a/b",
                         "--present", "yes")
    assert code != 0 and "letters, digits" in err[-1]
    out = tmp_path / "export.json"
    assert run_main(capsys, "review", "export", "--store", store, "--data", folders[0], "--out", str(out))[0] == 0
    assert json.loads(out.read_text()) == [{"dataset": dataset_key(folders[0]), "item_id": 3, "reviews": 1,
                                            "present_votes": 1, "unsafe_votes": 0, "keep": True}]
    assert run_main(capsys, "review", "export", "--store", store, "--out", str(out))[0] == 0
    assert {(r["dataset"], r["keep"]) for r in json.loads(out.read_text())} == {(dataset_key(folders[0]), True),
                                                                               (dataset_key(folders[1]), False)}


# --- a folder of JSON lines (the form a Space uploads to a Hub dataset repository) ------------------------------

def test_a_journal_folder_is_a_store_whose_answers_are_on_disk_when_acknowledged(tmp_path):
    import json

    from d3s.review import ReviewJournal, open_store

    folder = tmp_path / "reviews"
    assert isinstance(open_store(tmp_path / "reviews.sqlite"), ReviewStore)
    assert not isinstance(open_store(tmp_path / "reviews.sqlite"), ReviewJournal)
    store = open_store(folder)
    assert isinstance(store, ReviewJournal) and folder.is_dir() and not list(folder.iterdir())  # no file before an answer
    store.add(D, 1, "ann", True, False)
    store.add(D, 2, "ann", True, False)
    store.add(D, 2, "ann", False, True)  # ann changes her mind: the later answer wins
    (own,) = folder.glob("*.jsonl")
    lines = [json.loads(line) for line in own.read_text().splitlines()]
    assert [(r["item_id"], r["object_present"]) for r in lines] == [(1, True), (2, True), (2, False)]  # written at once
    # Another store on the folder (a restart, or `d3s split`) reads every file; the first sees the second's answers.
    other = open_store(folder)
    assert {(r.item_id, r.object_present, r.unsafe) for r in other.reviews(D)} == {(1, True, False), (2, False, True)}
    other.add(D, 3, "bob", True, False)
    assert len(list(folder.glob("*.jsonl"))) == 2 and store.reviewed_by(D, "bob") == {3}
    assert store.export_columns(D, [1, 2, 3, 4])["review_keep"] == [True, False, True, None]
    # A line a killed writer left half-written was never acknowledged: it is not an answer, and nothing else is lost.
    (folder / "answers-killed.jsonl").write_text(json.dumps({**lines[0], "item_id": 7}) + "\n" + '{"dataset": "dd')
    assert {r.item_id for r in open_store(folder).reviews(D)} == {1, 2, 3, 7}
    # Files copied in from elsewhere (a Hub repository's) merge; the latest answer of a reviewer to an item wins.
    (folder / "sub").mkdir()
    (folder / "sub" / "older.jsonl").write_text(json.dumps({**lines[0], "object_present": False, "answered_at": 1.0}) + "\n")
    assert store.reviews(D, 1)[0].object_present is True
    ids, end = store.answered_since(D, "ann", 0)
    assert set(ids) == {1, 2, 7} and store.answered_since(D, "ann", end) == ([], end)


def test_a_journal_refuses_a_line_that_is_not_an_answer(tmp_path):
    from d3s.review import open_store

    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "bad.jsonl").write_text('{"dataset": "dddddddddddddddd", "item_id": 1, "reviewer": "a/b", '
                                              '"object_present": true, "unsafe": false, "answered_at": 1.0}\n')
    with pytest.raises(ReviewError, match="bad.jsonl holds a line that is not a review"):
        open_store(tmp_path / "j")
    (tmp_path / "j" / "bad.jsonl").write_text('{"dataset": "dddddddddddddddd", "item_id": 1, "reviewer": "ann", '
                                              '"object_present": "yes", "unsafe": false, "answered_at": 1.0}\n')
    with pytest.raises(ReviewError, match="not a review"):
        open_store(tmp_path / "j")
