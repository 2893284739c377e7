"""Human review of generated images: a SQLite store of answers to the paper's two questions.

For each image a reviewer answers (appendix B of the paper): is the intended object there? is the
image unsafe? Several reviewers may answer each image; a reviewer's later answer replaces their
earlier one. The store is one SQLite file in WAL mode with a busy timeout, so the app's Review tab and
the CLI can write at the same time without losing an answer.

The default consensus is the paper's rule: an image is kept only if every reviewer says the object is
there and nobody flags it unsafe (and at least one reviewer answered).
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    item_id INTEGER NOT NULL,
    reviewer TEXT NOT NULL,
    object_present INTEGER NOT NULL CHECK (object_present IN (0, 1)),
    unsafe INTEGER NOT NULL CHECK (unsafe IN (0, 1)),
    answered_at REAL NOT NULL,
    PRIMARY KEY (item_id, reviewer)
);
"""

CONSENSUS_RULES = ("unanimous", "majority")


class ReviewError(ValueError):
    """A bad review (unknown rule, empty reviewer name) or an unusable store."""


@dataclass(frozen=True)
class Review:
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


class ReviewStore:
    """Answers of human reviewers, in one SQLite file.

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
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # One short-lived connection per call: safe across threads and processes.
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            yield db
        finally:
            db.close()

    def add(self, item_id: int, reviewer: str, object_present: bool, unsafe: bool) -> Review:
        """Record (or replace) one reviewer's answer for one image."""
        reviewer = (reviewer or "").strip()
        if not reviewer:
            raise ReviewError("A review needs a reviewer name.")
        review = Review(int(item_id), reviewer, bool(object_present), bool(unsafe), time.time())
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
                (review.item_id, review.reviewer, int(review.object_present), int(review.unsafe), review.answered_at),
            )
            db.execute("COMMIT")
        return review

    def reviews(self, item_id: int | None = None) -> list[Review]:
        query, args = "SELECT * FROM reviews", ()
        if item_id is not None:
            query, args = query + " WHERE item_id = ?", (int(item_id),)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY item_id, reviewer", args).fetchall()
        return [Review(r[0], r[1], bool(r[2]), bool(r[3]), r[4]) for r in rows]

    def reviewed_by(self, reviewer: str) -> set[int]:
        with self._connect() as db:
            return {r[0] for r in db.execute("SELECT item_id FROM reviews WHERE reviewer = ?", (reviewer,))}

    def next_item(self, item_ids: Iterable[int], reviewer: str) -> int | None:
        """The first image in ``item_ids`` that this reviewer has not answered yet."""
        done = self.reviewed_by(reviewer)
        return next((i for i in item_ids if int(i) not in done), None)

    def verdicts(self, rule: str = "unanimous") -> dict[int, Verdict]:
        """The consensus for every reviewed image."""
        by_item: dict[int, list[Review]] = {}
        for r in self.reviews():
            by_item.setdefault(r.item_id, []).append(r)
        return {
            i: Verdict(i, len(rs), sum(r.object_present for r in rs), sum(r.unsafe for r in rs), consensus(rs, rule))
            for i, rs in by_item.items()
        }

    def export_columns(self, item_ids: Iterable[int], rule: str = "unanimous") -> dict[str, list]:
        """Columns aligned with ``item_ids``: review counts, votes and the keep decision (None if unreviewed)."""
        verdicts = self.verdicts(rule)
        cols: dict[str, list] = {"review_count": [], "review_present": [], "review_unsafe": [], "review_keep": []}
        for i in item_ids:
            v = verdicts.get(int(i))
            cols["review_count"].append(v.reviews if v else 0)
            cols["review_present"].append(v.present_votes if v else 0)
            cols["review_unsafe"].append(v.unsafe_votes if v else 0)
            cols["review_keep"].append(v.keep if v else None)
        return cols
