"""Human review of generated images: a SQLite store of answers to the paper's two questions.

For each image a reviewer answers (appendix B of the paper): is the intended object there? is the
image unsafe? Several reviewers may answer each image; a reviewer's later answer replaces their
earlier one. The store is one SQLite file in WAL mode with a busy timeout, so the app's Review tab and
the CLI can write at the same time without losing an answer.

Every answer is keyed by ``(dataset, item_id, reviewer)``, where ``dataset`` is :func:`dataset_key` of the
dataset folder the image belongs to, so one store can hold the answers to several datasets without item 3
of one overwriting item 3 of another. A store written before answers were keyed is migrated in place when
opened: its answers become *legacy* answers (dataset ``''``), which count for whatever dataset is asked
for, unless the same reviewer answered the same item of that dataset under its key (the keyed answer wins).

The default consensus is the paper's rule: an image is kept only if every reviewer says the object is
there and nobody flags it unsafe (and at least one reviewer answered).

A store is either that SQLite file or a folder of JSON-lines files (:class:`ReviewJournal`, the form a Hugging Face
Space uploads to a Hub dataset repository, :mod:`d3s.review_hub`); :func:`open_store` tells them apart by the path.
Both have an answer on disk before :meth:`ReviewStore.add` returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import operator
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
import unicodedata
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    dataset TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    object_present INTEGER NOT NULL CHECK (object_present IN (0, 1)),
    unsafe INTEGER NOT NULL CHECK (unsafe IN (0, 1)),
    answered_at REAL NOT NULL,
    PRIMARY KEY (dataset, item_id, reviewer)
);
"""
_COLUMNS = "dataset, item_id, reviewer, object_present, unsafe, answered_at"

CONSENSUS_RULES = ("unanimous", "majority")
LEGACY = ""  # the dataset of answers stored before answers were keyed by dataset
MAX_DATASET_CHARS = 64
MAX_REVIEWER_CHARS = 64
MAX_ITEM_ID = 2**62
_REVIEWER_RE = re.compile(r"[\w.@-]+")  # \w: letters, digits and '_'
_REVIEWER_RULE = (f"A reviewer name is 1 to {MAX_REVIEWER_CHARS} characters: letters, digits and . _ @ - "
                  "(no spaces, slashes or other punctuation).")


class ReviewError(ValueError):
    """A bad review (unknown rule, empty reviewer name) or an unusable store."""


@dataclass(frozen=True)
class Review:
    dataset: str
    item_id: int
    reviewer: str
    object_present: bool
    unsafe: bool
    answered_at: float


@dataclass(frozen=True)
class Verdict:
    """The consensus over one image's reviews."""

    item_id: int
    reviews: int
    present_votes: int
    unsafe_votes: int
    keep: bool


def dataset_key(folder: str | Path) -> str:
    """A short stable fingerprint of a local dataset folder: the key its answers are stored under.

    It is the first 16 hex digits of the SHA-1 of the sorted, de-duplicated set of ``(item_id, fg, bg)``
    triples over *all* splits of the folder (:func:`d3s.dataset.find_splits`); a split without an
    ``item_id`` column uses each row's index within that split. Only those three integer columns are read,
    so 120,000 rows take a fraction of a second.

    Why this definition: ``d3s split`` copies a generated folder's rows into ``train`` and ``validation``
    (and ``benchmark``, a subset of ``validation``), so the union of the split folder's rows is the source's
    rows and both folders get the same key: answers given in the app on either one are found by
    ``d3s split --reviews`` on the source. ``d3s score`` adds columns but changes none of the three, so
    scoring keeps the key. The key ignores where the folder is, its name and the images' bytes; a folder
    with other rows (another run, other classes or backgrounds, more or fewer images) gets another key.
    (A source without an ``item_id`` column keys its rows by index, which a split folder does not keep,
    so there the two keys differ.)
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from .dataset import DatasetFormatError, find_splits

    parts = []
    for split, paths in find_splits(folder).items():
        offset = 0
        for p in paths:
            with pq.ParquetFile(p) as f:  # one open per shard for its schema and its three columns
                names = set(f.schema_arrow.names)
                missing = [c for c in ("fg", "bg") if c not in names]
                if missing:
                    raise DatasetFormatError(f"{p} (split {split!r}) has no {' or '.join(missing)} column; "
                                             "a d3s dataset needs 'image', 'fg' and 'bg'.")
                table = f.read(columns=[c for c in ("item_id", "fg", "bg") if c in names])
            n = table.num_rows
            cols = []
            for c in ("item_id", "fg", "bg"):
                if c in names:
                    col = table.column(c)
                    if col.null_count:
                        col = pc.fill_null(col, -1)
                    cols.append(col.cast(pa.int64()).to_numpy())
                else:
                    cols.append(np.arange(offset, offset + n, dtype=np.int64))
            offset += n
            parts.append(np.stack(cols, axis=1) if n else np.empty((0, 3), dtype=np.int64))
    rows = np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
    if len(rows):
        rows = rows[np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))]
        keep = np.ones(len(rows), dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]).any(axis=1)
        rows = rows[keep]
    digest = hashlib.sha1(b"d3s dataset key v1: (item_id, fg, bg) int64 le\n")
    digest.update(np.ascontiguousarray(rows, dtype="<i8").tobytes())
    return digest.hexdigest()[:16]


def consensus(reviews: Iterable[Review], rule: str = "unanimous") -> bool:
    """Whether an image is kept, from its reviews.

    ``unanimous`` (the paper's rule): every reviewer saw the object and nobody flagged it unsafe.
    ``majority``: more than half saw the object and nobody flagged it unsafe.
    No review means not kept: an unreviewed image is not part of a reviewed benchmark.
    """
    if rule not in CONSENSUS_RULES:
        raise ReviewError(f"Unknown consensus rule {rule!r}; use one of {', '.join(CONSENSUS_RULES)}.")
    reviews = list(reviews)
    if not reviews or any(r.unsafe for r in reviews):
        return False
    present = sum(r.object_present for r in reviews)
    return present == len(reviews) if rule == "unanimous" else present * 2 > len(reviews)


def _check_dataset(dataset) -> str:
    if not isinstance(dataset, str) or not dataset:
        raise ReviewError("A review needs the dataset's key (d3s.review.dataset_key of its folder).")
    if len(dataset) > MAX_DATASET_CHARS:
        raise ReviewError(f"A dataset key is at most {MAX_DATASET_CHARS} characters (d3s.review.dataset_key of its folder).")
    return dataset


def _check_reviewer(reviewer) -> str:
    if not isinstance(reviewer, str):
        raise ReviewError(_REVIEWER_RULE)
    if len(reviewer) > 4 * MAX_REVIEWER_CHARS:  # before any other work on a huge input
        raise ReviewError(_REVIEWER_RULE)
    name = unicodedata.normalize("NFC", reviewer.strip())
    if not 1 <= len(name) <= MAX_REVIEWER_CHARS or not _REVIEWER_RE.fullmatch(name):
        raise ReviewError(_REVIEWER_RULE)
    return name


def valid_reviewer(name) -> bool:
    """Whether ``name`` is a reviewer name the store accepts (see :data:`_REVIEWER_RULE`)."""
    try:
        _check_reviewer(name)
        return True
    except ReviewError:
        return False


def _check_item(item_id) -> int:
    try:
        if isinstance(item_id, bool):
            raise TypeError
        item = operator.index(item_id)
    except TypeError:
        raise ReviewError(f"An item_id is an integer from 0 to 2**62, not a {type(item_id).__name__}.") from None
    if not 0 <= item <= MAX_ITEM_ID:
        raise ReviewError("An item_id is an integer from 0 to 2**62.")
    return item


def _row(r: tuple) -> Review:
    return Review(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5])


def _new_review(dataset, item_id, reviewer, object_present, unsafe, answered_at: float | None = None) -> Review:
    """A checked answer (every store's one rule for what it accepts); ``answered_at`` defaults to now."""
    return Review(_check_dataset(dataset), _check_item(item_id), _check_reviewer(reviewer), bool(object_present),
                  bool(unsafe), time.time() if answered_at is None else float(answered_at))


class ReviewStore:
    """Answers of human reviewers, in one SQLite file, keyed by (dataset, item_id, reviewer).

    A file written with the old schema (answers keyed by (item_id, reviewer) only) is migrated in place on
    open, in one transaction: its answers are kept as legacy answers (dataset ``''``, see the module doc).

    Args:
        path (`str` or `Path`): the database file; created if missing.
        timeout (`float`, *optional*, defaults to 30): seconds a writer waits for a lock held by another.
    """

    def __init__(self, path: str | Path, timeout: float = 30.0):
        self.path = Path(path)
        self.timeout = timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            if self._columns(db) != _COLUMNS.split(", "):
                self._create_or_migrate(db)

    @property
    def location(self) -> str:
        """Where the answers are kept (for the operator's log)."""
        return str(self.path)

    @staticmethod
    def _columns(db: sqlite3.Connection) -> list[str]:
        return [r[1] for r in db.execute("PRAGMA table_info(reviews)")]

    def _create_or_migrate(self, db: sqlite3.Connection) -> None:
        # BEGIN IMMEDIATE takes the write lock first, so of two processes opening an old file at once one
        # migrates and the other, once the lock is free, finds the new schema and does nothing.
        db.execute("BEGIN IMMEDIATE")
        try:
            columns = self._columns(db)
            if not columns:
                db.execute(_SCHEMA)
            elif "dataset" not in columns:
                if not {"item_id", "reviewer", "object_present", "unsafe", "answered_at"} <= set(columns):
                    raise ReviewError(f"{self.path} has a 'reviews' table this version cannot read (columns: "
                                      f"{', '.join(columns)}).")
                db.execute(_SCHEMA.replace("EXISTS reviews", "EXISTS reviews_keyed"))
                db.execute(f"INSERT INTO reviews_keyed ({_COLUMNS}) "
                           "SELECT ?, item_id, reviewer, object_present, unsafe, answered_at FROM reviews", (LEGACY,))
                db.execute("DROP TABLE reviews")
                db.execute("ALTER TABLE reviews_keyed RENAME TO reviews")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call: safe across threads and processes.
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            yield db
        finally:
            db.close()

    def add(self, dataset: str, item_id: int, reviewer: str, object_present: bool, unsafe: bool) -> Review:
        """Record (or replace) one reviewer's answer for one image of one dataset (its :func:`dataset_key`)."""
        review = _new_review(dataset, item_id, reviewer, object_present, unsafe)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                f"INSERT OR REPLACE INTO reviews ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (review.dataset, review.item_id, review.reviewer, int(review.object_present), int(review.unsafe),
                 review.answered_at),
            )
            db.execute("COMMIT")
        return review

    def reviews(self, dataset: str | None = None, item_id: int | None = None) -> list[Review]:
        """The answers, ordered by item and reviewer.

        ``dataset=None``: every stored answer, of every dataset, legacy ones with dataset ``''``.
        A dataset key: that dataset's answers, plus the legacy answers (returned with dataset ``''``) of
        reviewers who did not answer the same item under the key.
        """
        where, args = [], []
        if item_id is not None:
            where.append("item_id = ?")
            args.append(int(item_id))
        if dataset is None:
            query = f"SELECT {_COLUMNS} FROM reviews" + (" WHERE " + " AND ".join(where) if where else "")
        else:
            cond = "".join(f" AND {w}" for w in where)
            query = f"SELECT {_COLUMNS} FROM reviews WHERE dataset = ?{cond}"
            args = [dataset, *args]
            if dataset != LEGACY:
                query += (f" UNION ALL SELECT {_COLUMNS} FROM reviews AS old WHERE old.dataset = ?{cond} AND NOT EXISTS "
                          "(SELECT 1 FROM reviews AS k WHERE k.dataset = ? AND k.item_id = old.item_id "
                          "AND k.reviewer = old.reviewer)")
                args = [*args, LEGACY, *args[1:], dataset]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY item_id, reviewer, dataset", args).fetchall()
        return [_row(r) for r in rows]

    def datasets(self) -> list[str]:
        """The dataset keys the store holds answers for (``''`` for legacy answers), sorted."""
        with self._connect() as db:
            return [r[0] for r in db.execute("SELECT DISTINCT dataset FROM reviews ORDER BY dataset")]

    def reviewed_by(self, dataset: str, reviewer: str) -> set[int]:
        """The items of ``dataset`` this reviewer has answered (under its key, or in a legacy answer)."""
        if isinstance(reviewer, str):  # the name as :meth:`add` stores it
            reviewer = unicodedata.normalize("NFC", reviewer.strip())
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT item_id FROM reviews WHERE dataset IN (?, ?) AND reviewer = ?",
                                             (dataset, LEGACY, reviewer))}

    def next_item(self, dataset: str, item_ids: Iterable[int], reviewer: str) -> int | None:
        """The first image in ``item_ids`` that this reviewer has not answered yet for ``dataset``."""
        done = self.reviewed_by(dataset, reviewer)
        return next((i for i in item_ids if int(i) not in done), None)

    def answered_since(self, dataset: str, reviewer: str, after: int = 0) -> tuple[list[int], int]:
        """What :meth:`reviewed_by` gains over time, read in pieces: the items of ``dataset`` this reviewer answered in
        the rows stored after position ``after`` (0: every answer), and the position to pass next time.

        For a queue that must not read every answer on every request (the app's Review tab): answers are only ever added
        or replaced, never removed, and a new (dataset, item, reviewer) answer is stored in a row after every earlier
        one, so ``reviewed_by`` equals the union of the pieces. A position past the end (the file was rebuilt) returns
        ``([], -1)``: start again from 0. Item ids may repeat (a replaced answer)."""
        if isinstance(reviewer, str):
            reviewer = unicodedata.normalize("NFC", reviewer.strip())
        with self._connect() as db:
            db.execute("BEGIN")  # one snapshot for both reads
            try:
                end = db.execute("SELECT coalesce(max(rowid), 0) FROM reviews").fetchone()[0]
                if end < after:
                    return [], -1
                # '+': scan the rows after `after` by rowid, not the dataset's whole primary-key range
                ids = [r[0] for r in db.execute("SELECT item_id FROM reviews WHERE rowid > ? AND rowid <= ? AND "
                                                "+dataset IN (?, ?) AND reviewer = ?", (after, end, dataset, LEGACY, reviewer))]
            finally:
                db.execute("COMMIT")
        return ids, end

    def verdicts(self, dataset: str | None, rule: str = "unanimous") -> dict[int, Verdict]:
        """The consensus for every reviewed image of ``dataset`` (its answers as :meth:`reviews` gives them).

        ``None`` is for a store of one dataset: it means that dataset (or the legacy answers alone when no
        answer is keyed); a store holding answers to several datasets refuses it, since their item ids collide.
        """
        if dataset is None:
            keyed = [d for d in self.datasets() if d != LEGACY]
            if len(keyed) > 1:
                raise ReviewError(f"This store holds answers to {len(keyed)} datasets; name one (its dataset key, "
                                  "or --data FOLDER on the command line).")
            dataset = keyed[0] if keyed else LEGACY
        if rule not in CONSENSUS_RULES:
            consensus([], rule)  # raises the usual message
        by_item: dict[int, list[Review]] = {}
        for r in self.reviews(dataset):
            by_item.setdefault(r.item_id, []).append(r)
        return {
            i: Verdict(i, len(rs), sum(r.object_present for r in rs), sum(r.unsafe for r in rs), consensus(rs, rule))
            for i, rs in by_item.items()
        }

    def export_columns(self, dataset: str, item_ids: Iterable[int], rule: str = "unanimous") -> dict[str, list]:
        """Columns aligned with ``item_ids`` of ``dataset``: review counts, votes and the keep decision (None if unreviewed)."""
        verdicts = self.verdicts(dataset, rule)
        cols: dict[str, list] = {"review_count": [], "review_present": [], "review_unsafe": [], "review_keep": []}
        for i in item_ids:
            v = verdicts.get(int(i))
            cols["review_count"].append(v.reviews if v else 0)
            cols["review_present"].append(v.present_votes if v else 0)
            cols["review_unsafe"].append(v.unsafe_votes if v else 0)
            cols["review_keep"].append(v.keep if v else None)
        return cols


# --- a folder of JSON lines -------------------------------------------------------------------------------------

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
JOURNAL_PATTERN = "*.jsonl"  # the files of a journal folder (and of the Hub repository it is uploaded to)


def is_journal(path: str | Path) -> bool:
    """Whether a store path names a folder of JSON-lines files: an existing folder, or a new path that does not end
    in ``.sqlite``, ``.sqlite3`` or ``.db`` (those, and any existing file, are SQLite stores)."""
    path = Path(path)
    return path.is_dir() or (not path.exists() and path.suffix.lower() not in SQLITE_SUFFIXES)


def open_store(path: str | Path, lock=None) -> "ReviewStore":
    """The review store at ``path``: a :class:`ReviewJournal` for a folder (see :func:`is_journal`), else the SQLite
    :class:`ReviewStore`. ``lock`` is the journal's (see there)."""
    return ReviewJournal(path, lock=lock) if is_journal(path) else ReviewStore(path)


class ReviewJournal(ReviewStore):
    """Answers as JSON lines (one :class:`Review` each) in the ``*.jsonl`` files of a folder.

    Each store object appends to a file of its own (``answers-<UTC time>-<random>.jsonl``, made at its first answer),
    flushed to disk with ``fsync`` before :meth:`add` returns. It reads every ``*.jsonl`` file in the folder and below,
    its own and others' (another process's, or files fetched from a Hub dataset repository), so folders merge by
    copying files. Of two answers by one reviewer to one item, the later ``answered_at`` wins, whatever file it is in.
    Only whole lines are read: a line that is being written, or that a killed process left half-written (never
    acknowledged), is not an answer.

    The queries are :class:`ReviewStore`'s, on a private SQLite index (a temporary file, removed with the object)
    built from the lines at open and brought up to date before every read.

    Args:
        folder (`str` or `Path`): the folder; created if missing.
        lock (*optional*): a lock held while a line is appended, e.g. ``huggingface_hub.CommitScheduler.lock``, so an
            upload of the folder never reads half a line.
        timeout (`float`, *optional*, defaults to 30): as for :class:`ReviewStore` (the index).
    """

    def __init__(self, folder: str | Path, lock=None, timeout: float = 30.0):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise ReviewError(f"{self.folder} is a file; a journal of reviews is a folder of *.jsonl files.")
        self.folder.mkdir(parents=True, exist_ok=True)
        index = tempfile.mkdtemp(prefix="d3s-review-index-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, index, True)
        super().__init__(Path(index) / "index.sqlite", timeout)
        self.lock = lock if lock is not None else contextlib.nullcontext()
        self._mutex = threading.Lock()  # one writer of this object's file and of the index at a time
        self._offsets: dict[Path, int] = {}  # bytes of each file already in the index (whole lines)
        self._own: Path | None = None
        self.sync()

    @property
    def location(self) -> str:
        return str(self.folder)

    def add(self, dataset: str, item_id: int, reviewer: str, object_present: bool, unsafe: bool) -> Review:
        """Append one answer to this object's file and wait until it is on disk; then it is in the index too."""
        review = _new_review(dataset, item_id, reviewer, object_present, unsafe)
        data = (json.dumps(dataclasses.asdict(review), sort_keys=True) + "\n").encode()
        with self._mutex, self.lock:
            created = self._own is None
            if created:
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                self._own = self.folder / f"answers-{stamp}-{uuid.uuid4().hex[:12]}.jsonl"
            fd = os.open(self._own, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:  # the new file's name is on disk too
                folder_fd = os.open(self.folder, os.O_RDONLY)
                try:
                    os.fsync(folder_fd)
                finally:
                    os.close(folder_fd)
        self.sync()
        return review

    def sync(self) -> int:
        """Read the whole lines added to the folder's files since the last call into the index; how many were read."""
        with self._mutex:
            answers: list[Review] = []
            for path in sorted(self.folder.rglob(JOURNAL_PATTERN)):
                start = self._offsets.get(path, 0)
                try:
                    if not path.is_file() or path.stat().st_size <= start:
                        continue
                    with open(path, "rb") as f:
                        f.seek(start)
                        chunk = f.read()
                except OSError:  # removed while listed
                    continue
                whole = chunk[: chunk.rfind(b"\n") + 1]
                for line in whole.splitlines():
                    if line.strip():
                        answers.append(self._parse(line, path))
                self._offsets[path] = start + len(whole)
            if answers:
                self._index(answers)
            return len(answers)

    @staticmethod
    def _parse(line: bytes, path: Path) -> Review:
        try:
            r = json.loads(line)
            if not (isinstance(r["object_present"], bool) and isinstance(r["unsafe"], bool)
                    and isinstance(r["answered_at"], (int, float)) and not isinstance(r["answered_at"], bool)):
                raise TypeError("object_present and unsafe are true or false, answered_at a number")
            return _new_review(r["dataset"], r["item_id"], r["reviewer"], r["object_present"], r["unsafe"], r["answered_at"])
        except (ValueError, KeyError, TypeError, ReviewError) as err:
            raise ReviewError(f"{path} holds a line that is not a review ({type(err).__name__}: {err}); "
                              "each line is one JSON object with the fields of d3s.review.Review.") from None

    def _index(self, answers: list[Review]) -> None:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                f"INSERT INTO reviews ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dataset, item_id, reviewer) "
                "DO UPDATE SET object_present = excluded.object_present, unsafe = excluded.unsafe, "
                "answered_at = excluded.answered_at WHERE excluded.answered_at >= reviews.answered_at",
                [(r.dataset, r.item_id, r.reviewer, int(r.object_present), int(r.unsafe), r.answered_at) for r in answers])
            db.execute("COMMIT")

    # Every read brings the index up to date first (verdicts, export_columns and next_item read through these).
    def reviews(self, dataset: str | None = None, item_id: int | None = None) -> list[Review]:
        self.sync()
        return super().reviews(dataset, item_id)

    def datasets(self) -> list[str]:
        self.sync()
        return super().datasets()

    def reviewed_by(self, dataset: str, reviewer: str) -> set[int]:
        self.sync()
        return super().reviewed_by(dataset, reviewer)

    def answered_since(self, dataset: str, reviewer: str, after: int = 0) -> tuple[list[int], int]:
        self.sync()
        return super().answered_since(dataset, reviewer, after)
