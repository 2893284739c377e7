"""Scoring shared among processes (``accelerate launch -m d3s benchmark|bgchallenge``): chunks, their files, the merge.

The unit of work is a chunk: a fixed range of one part's items (the images of a D3S split, of ImageNet val, of a
challenge variation, or the foregrounds of the adversarial search) scored by one model. Chunks are cut the same
whatever the number of processes, so one process's run and N processes' runs compute the same things:

- a preprocessing group's chunks that some of its models still lack are shared round-robin (:func:`share`), the
  same chunks to a process for every model of the group, so each process decodes only the images of its own
  chunks, once per group (:class:`Decoded`), and every GPU has work even with a single model;
- each chunk's outputs (top-5 predictions, or the search's arrays) go to one file, written atomically, under
  ``RESULTS/chunks/<model>/<key>/<part>-<first>-<last>.npz``; the key (:func:`chunk_key`) digests the model's
  identity, the data's fingerprint, the precision and the chunking, so a chunk made otherwise is never reused;
- after a barrier the main process reads every chunk of a model, concatenated in order, and computes the model's
  result exactly as a single process does from the whole arrays; the chunk folder then goes.

A killed run, rerun, scores only the chunks that have no file: a finished model has its result (reused as
before), a finished chunk its file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .imagesets import ImageSet
from .results import model_slug

CHUNKS_DIR = "chunks"  # inside a results folder, while models are being scored


@dataclass(frozen=True)
class Chunk:
    """Items ``start:stop`` of one part (an image set, or the adversarial search's foregrounds)."""

    part: str
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.part}-{self.start:08d}-{self.stop - 1:08d}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_chunks(parts: dict[str, tuple[int, int]]) -> list[Chunk]:
    """Every chunk of ``parts`` (name -> (items, items per chunk)), part by part in order."""
    return [Chunk(part, s, min(s + size, n)) for part, (n, size) in parts.items() for s in range(0, n, size)]


def chunk_key(identity: dict, data: dict, precision: str, parts: dict[str, tuple[int, int]]) -> str:
    """A digest of everything a chunk's outputs depend on: the model, the data, the precision, the chunking."""
    text = json.dumps({"identity": identity, "data": data, "precision": precision, "parts": parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def share(chunks: list[Chunk], done: list[set[str]], rank: int, world: int, turn: int = 0) -> list[Chunk]:
    """This process's chunks of a preprocessing group: of the chunks some model lacks (``done``: each model's finished
    chunk names), every ``world``-th, the first of them going to process ``turn`` (so that, group after group, the
    round-robin goes on where it stopped and no process gets every group's odd chunk). Every process must list ``done``
    before any writes a chunk."""
    remaining = [c for c in chunks if any(c.name not in names for names in done)]
    return remaining[(rank - turn) % world :: world]


def remaining_count(chunks: list[Chunk], done: list[set[str]]) -> int:
    """How many chunks some model of a group lacks (to carry the round-robin of :func:`share` to the next group)."""
    return sum(any(c.name not in names for names in done) for c in chunks)


class ChunkStore:
    """The chunk files of one model in a results folder: ``RESULTS/chunks/<model slug>/<key>/``.

    Args:
        out (`str` or `Path`): the results folder.
        name (`str`): the model's name.
        key (`str`): :func:`chunk_key` of this model and run.
    """

    def __init__(self, out: str | Path, name: str, key: str):
        self.root = Path(out) / CHUNKS_DIR
        self.model = self.root / model_slug(name)
        self.folder = self.model / key

    def done(self) -> set[str]:
        """Names of the chunks written (a file is there whole or not at all)."""
        return {p.stem for p in self.folder.glob("*.npz")} if self.folder.is_dir() else set()

    def write(self, chunk: Chunk, outputs: dict[str, np.ndarray], seconds: float, device: str) -> None:
        """One chunk's outputs (arrays over its items), with the time and device that made them, atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{chunk.name}.npz"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        buf = io.BytesIO()
        np.savez(buf, **outputs, _seconds=np.float64(seconds), _device=np.str_(device))
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def merged(self, chunks: list[Chunk]) -> tuple[dict[str, dict[str, np.ndarray]], float, str]:
        """Every chunk's outputs, concatenated per part in chunk order; the seconds summed; the devices that ran them."""
        parts: dict[str, dict[str, list]] = {}
        seconds, devices = 0.0, set()
        for chunk in chunks:
            with np.load(self.folder / f"{chunk.name}.npz", allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
            seconds += float(arrays.pop("_seconds"))
            devices.add(str(arrays.pop("_device")))
            for k, v in arrays.items():
                parts.setdefault(chunk.part, {}).setdefault(k, []).append(v)
        joined = {part: {k: np.concatenate(v) for k, v in arrays.items()} for part, arrays in parts.items()}
        return joined, seconds, ", ".join(sorted(devices))

    def write_error(self, rank: int, text: str) -> None:
        """Why this process could not score its chunks of the model (read by the main process)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"error-{rank}.txt").write_text(text)

    def errors(self) -> list[str]:
        return [p.read_text() for p in sorted(self.folder.glob("error-*.txt"))] if self.folder.is_dir() else []

    def tidy(self) -> None:
        """Before a run (main process, before any writes): temporary files and errors of earlier runs go, and chunk
        folders of this model made with other settings (a stale chunk is never reused)."""
        if not self.model.is_dir():
            return
        for other in self.model.iterdir():
            if other != self.folder:
                shutil.rmtree(other, ignore_errors=True)
        for p in [*self.folder.glob(".*.tmp"), *self.folder.glob("error-*.txt")]:
            p.unlink(missing_ok=True)

    def remove(self) -> None:
        """The model's chunks, once its result is written (and the chunks folder when it is left empty)."""
        shutil.rmtree(self.model, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:  # other models' chunks are still there
            pass


def subset(images: ImageSet, rows: np.ndarray) -> ImageSet:
    """The images of ``rows`` (sorted, unique) as an image set of their own; ``images`` itself when that is every row."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == len(images):
        return images

    def read(start: int, stop: int) -> list:
        picked = rows[start:stop]
        cuts = np.flatnonzero(np.diff(picked) != 1) + 1  # runs of consecutive rows, each read at once
        out = []
        for run in np.split(picked, cuts):
            out += images.read(int(run[0]), int(run[-1]) + 1)
        return out

    return replace(images, fg=images.fg[rows], read=read, bg=None if images.bg is None else images.bg[rows],
                   group=None if images.group is None else images.group[rows])


class Decoded:
    """One process's decoded images of one preprocessing setting: per image set, the rows its chunks read.

    ``take(name, rows)`` gives those rows' images (a view of the array when the rows are consecutive).
    """

    def __init__(self):
        self.rows: dict[str, np.ndarray] = {}
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, name: str, rows: np.ndarray, array: np.ndarray) -> None:
        self.rows[name], self.arrays[name] = rows, array

    def __len__(self) -> int:
        return sum(len(a) for a in self.arrays.values())

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        have = self.rows[name]
        pos = np.searchsorted(have, rows)
        if len(rows) and (pos[-1] >= len(have) or not np.array_equal(have[pos], rows)):
            raise KeyError(f"rows of {name!r} that this process did not decode")
        if len(pos) and (len(pos) == 1 or (np.diff(pos) == 1).all()):
            return self.arrays[name][pos[0] : pos[-1] + 1]
        return self.arrays[name][pos]


def needed_rows(needs: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The union, per image set, of the rows that some chunks read (sorted, unique)."""
    wanted: dict[str, list[np.ndarray]] = {}
    for need in needs:
        for name, rows in need.items():
            wanted.setdefault(name, []).append(np.asarray(rows, dtype=np.int64))
    return {name: np.unique(np.concatenate(parts)) for name, parts in wanted.items()}


def build_seeded(spec, device):
    """``spec.build(device)`` (a :class:`d3s.classifiers.ClassifierSpec`) with torch's generator seeded, and restored
    after: random weights (``--no-pretrained``) are then the same in every process and every run, so a model's chunks
    are always one model's. Released weights do not depend on it."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return spec.build(str(device))


def end_process_group(world: int) -> None:
    """After a run's last barrier over several processes: close torch.distributed's process group (as ``d3s embed``)."""
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


__all__ = ["CHUNKS_DIR", "Chunk", "ChunkStore", "Decoded", "build_seeded", "chunk_key", "end_process_group", "needed_rows",
           "plan_chunks", "remaining_count", "share", "subset"]
