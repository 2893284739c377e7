"""Where the app keeps its review answers, so that a Hugging Face Space's restart loses none.

A Space's own disk is wiped at every restart. Two places outlive one:

- **persistent storage**, mounted at ``/data`` when the Space has it: there the default store is
  ``/data/reviews.sqlite`` (:func:`default_reviews`);
- **a Hub dataset repository** the operator names (``--reviews-repo ORG/NAME``, env ``D3S_REVIEWS_REPO``): the
  answers are JSON lines in a local folder (:class:`d3s.review.ReviewJournal`) that
  ``huggingface_hub.CommitScheduler`` uploads every few minutes, and once more when the app exits (also on SIGTERM,
  which ``app.py`` turns into a clean exit). At start the repository's answer files that the folder lacks are
  downloaded into it (:func:`fetch_answers`), so the answers given before the restart count. The repository is
  created private if missing; the token is the machine's (a Space's ``HF_TOKEN`` secret), never printed.

Either way an answer is on the local disk (a committed SQLite transaction, or a line flushed with ``fsync``) before
it is acknowledged, and ``d3s split --reviews`` reads the same path (the file, or the folder) as the app.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from .review import JOURNAL_PATTERN, ReviewError, ReviewJournal, ReviewStore, is_journal, open_store

PERSISTENT_STORAGE = Path("/data")  # where a Space mounts its persistent storage, when it has some
UPLOAD_EVERY_MINUTES = 5.0


def persistent_storage(on_space: bool) -> Path | None:
    """The Space's persistent storage folder, when the app runs on a Space that has one it may write to."""
    storage = PERSISTENT_STORAGE
    return storage if on_space and storage.is_dir() and os.access(storage, os.W_OK) else None


def default_reviews(on_space: bool, repo: str | None) -> str:
    """The review store when ``--reviews`` is not given: in the Space's persistent storage when there is one, else
    in the working folder; a folder of JSON lines (``reviews``) when a repository is named, else ``reviews.sqlite``."""
    root = persistent_storage(on_space)
    name = "reviews" if repo else "reviews.sqlite"
    return str(root / name) if root is not None else name


def fetch_answers(api, repo: str, folder: Path) -> list[Path]:
    """Download the repository's answer files that ``folder`` lacks; the files fetched.

    A file the folder already has is kept: answer files are only appended to, so a local copy is the repository's
    or longer (answers not uploaded yet)."""
    fetched = []
    for name in api.list_repo_files(repo, repo_type="dataset"):
        if fnmatch.fnmatch(name, JOURNAL_PATTERN) and not (folder / name).exists():
            fetched.append(Path(api.hf_hub_download(repo, name, repo_type="dataset", local_dir=folder)))
    return fetched


def open_app_store(path: str, repo: str | None = None, api=None, every: float = UPLOAD_EVERY_MINUTES) -> ReviewStore:
    """The app's review store at ``path``; with ``repo``, a journal folder kept in step with that Hub dataset.

    Args:
        path (`str`): a SQLite file or a folder (:func:`d3s.review.open_store`); with ``repo``, a folder.
        repo (`str`, *optional*): ``ORG/NAME`` of the dataset repository the answers are uploaded to.
        api (`huggingface_hub.HfApi`, *optional*): the client (tests pass one that stands in for the Hub).
        every (`float`, *optional*, defaults to 5): minutes between uploads.

    The journal's ``scheduler`` attribute is the ``CommitScheduler`` (``scheduler.trigger()`` uploads now).
    """
    if repo is None:
        return open_store(path)
    if not is_journal(path):
        raise ReviewError(f"--reviews-repo keeps the answers as JSON lines in a folder, and {path} is a SQLite file: "
                          "give --reviews a folder (e.g. reviews).")
    from huggingface_hub import CommitScheduler, HfApi

    api = api or HfApi()
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        api.create_repo(repo, repo_type="dataset", private=True, exist_ok=True)
        fetch_answers(api, repo, folder)
    except Exception as err:  # no network, no token, no right to the repo (huggingface_hub's messages carry no token)
        reason = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}" if str(err) else type(err).__name__
        raise ReviewError(f"The reviews repository {repo} could not be read ({reason}); the app does not start without "
                          "the answers it already holds. Check the network and that the token may write to it.") from None
    # Its first upload (at once) offers the fetched files too: the same bytes, which create_commit skips as unchanged.
    scheduler = CommitScheduler(repo_id=repo, repo_type="dataset", folder_path=folder, every=every, private=True,
                                allow_patterns=[JOURNAL_PATTERN], hf_api=api)
    store = ReviewJournal(folder, lock=scheduler.lock)
    store.scheduler = scheduler
    return store
