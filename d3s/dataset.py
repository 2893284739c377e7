"""The dataset format: a folder laid out as a Hugging Face Hub dataset repository.

::

    OUT/
      README.md                      # card; its YAML declares configs (splits) and features
      data/train-00000000-00000063.parquet
      data/validation-....parquet
      d3s_run.json                   # generation settings (only for generated data)

Shards are parquet files holding `datasets` features in their schema metadata, written atomically
(temporary file, then rename), so a crash never leaves a half-written shard behind. Any folder in
this layout loads with ``datasets.load_dataset(OUT)`` with the ``fg``/``bg`` label names intact.

Commands read more than they write: any parquet layout ``datasets.load_dataset(FOLDER)`` accepts (the Hub's
own ``data/train-00000-of-00001.parquet``, ``train/*.parquet``, a card's ``configs``) and any Hub dataset id.
:func:`find_splits` is the one place that decides which splits a folder has.
"""

from __future__ import annotations

import itertools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

if TYPE_CHECKING:  # `datasets` takes half a second to import: loaded where used, so `d3s --help` stays instant
    import datasets

DATA_DIR = "data"
_SHARD_RE = re.compile(r"^(?P<split>[a-z][a-z0-9_]*)-(?P<first>\d{8})-(?P<last>\d{8})\.parquet$")


class DatasetFormatError(ValueError):
    """A folder that is not a dataset in the project's format, or lacks what a command needs."""


def label_features(fg_names: Sequence[str], bg_names: Sequence[str]) -> dict[str, datasets.ClassLabel]:
    """The two label columns every d3s dataset has."""
    import datasets

    return {"fg": datasets.ClassLabel(names=list(fg_names)), "bg": datasets.ClassLabel(names=list(bg_names))}


def shard_name(split: str, first: int, last: int) -> str:
    """Shard file name; item ids are disjoint across shards, so names never collide across processes."""
    return f"{split}-{first:08d}-{last:08d}.parquet"


def write_shard(root: str | Path, split: str, rows: Sequence[dict], features: datasets.Features, key: str = "item_id") -> Path:
    """Encode ``rows`` (PIL images allowed) and write them as one parquet shard, atomically.

    Rows must carry an integer ``key`` column; the shard is named by its first and last key.
    """
    if not rows:
        raise ValueError("write_shard needs at least one row")
    encoded = [features.encode_example(r) for r in rows]
    return write_table(root, split, pa.Table.from_pylist(encoded, schema=features.arrow_schema), key)


def write_table(root: str | Path, split: str, table: pa.Table, key: str = "item_id") -> Path:
    """Write an Arrow table (schema from ``features.arrow_schema``) as one parquet shard, atomically.

    For columns too large to go through Python rows (precomputed features); named like :func:`write_shard`.
    """
    ids = table.column(key).to_numpy()
    path = Path(root) / DATA_DIR / shard_name(split, int(ids.min()), int(ids.max()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as f:  # the rename below must not reach the disk before the data does
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def is_shard_name(name: str) -> bool:
    """Whether a file name is one of the project's own shard names (``<split>-<first>-<last>.parquet``)."""
    return bool(_SHARD_RE.match(name))


def shard_paths(root: str | Path, split: str | None = None) -> list[Path]:
    """The finished shards of a folder (temporary files excluded), sorted by name."""
    data = Path(root) / DATA_DIR
    if not data.is_dir():
        return []
    out = []
    for p in sorted(data.iterdir()):
        m = _SHARD_RE.match(p.name)
        if m and (split is None or m.group("split") == split):
            out.append(p)
    return out


def remove_partial_files(root: str | Path) -> int:
    """Delete temporary files a killed writer left behind; returns how many."""
    data = Path(root) / DATA_DIR
    removed = 0
    if data.is_dir():
        for p in data.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


def read_parquet(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One parquet file as a table (``columns``: only those; a missing one raises ``pa.ArrowInvalid``, as
    ``pq.read_table`` does). Through ``pq.ParquetFile``: a third of ``pq.read_table``'s time per file, which goes
    through the dataset API and counts when a split of 100,000 rows is 391 shards."""
    with pq.ParquetFile(path) as f:
        if columns is not None:
            missing = [c for c in columns if c not in f.schema_arrow.names]
            if missing:
                raise pa.ArrowInvalid(f"{path} has no column {missing[0]!r}")
        return f.read(columns=None if columns is None else list(columns))


def read_column(paths: Iterable[Path], column: str) -> tuple[list, list[Path]]:
    """Read one column from shards; returns (values, unreadable shard paths)."""
    values: list = []
    bad: list[Path] = []
    for p in paths:
        try:
            values.extend(read_parquet(p, [column]).column(column).to_pylist())
        except (pa.ArrowException, OSError):
            bad.append(p)
    return values, bad


def splits_in(root: str | Path) -> list[str]:
    """The splits of the project's own shards under ``data/`` (what :func:`write_card` declares)."""
    return sorted({_SHARD_RE.match(p.name).group("split") for p in shard_paths(root)})


def card_metadata(root: str | Path, features: datasets.Features) -> dict:
    """The card YAML that ``datasets.load_dataset(root)`` reads: ``configs`` (one per split found under ``data/``)
    and ``dataset_info`` (the features, with the ``fg``/``bg`` label names)."""
    return {
        "configs": [{"config_name": "default",
                     "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*.parquet"} for s in splits_in(root)]}],
        "dataset_info": {"features": features._to_yaml_list()},
    }


def write_card(root: str | Path, features: datasets.Features, body: str, extra_yaml: dict | None = None) -> Path:
    """Write ``README.md``: YAML (configs per split found under ``data/``, features) and a Markdown body."""
    meta = {**(extra_yaml or {}), **card_metadata(root, features)}
    text = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body.strip() + "\n"
    path = Path(root) / "README.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


# --- any parquet layout `datasets.load_dataset(FOLDER)` reads -------------------------------------------

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # ORG/NAME (or a legacy NAME); a missing local path like /a/b is not one
PEEK_DEPTH = 3  # a folder without a card must hold a parquet file at most this many folders down ...
PEEK_ENTRIES = 5000  # ... among the first entries looked at; a bigger tree without one is refused unscanned


def _card_configs(root: Path):
    """The ``configs`` of the folder's card (``README.md`` YAML), as ``datasets`` reads them; empty if none."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, DatasetCardData

    readme = root / "README.md"
    try:
        data = DatasetCard.load(readme).data if readme.is_file() else DatasetCardData()
        return MetadataConfigs.from_dataset_card_data(data)
    except ValueError as err:  # a card whose YAML configs are malformed
        raise DatasetFormatError(f"{root}/README.md declares configs that `datasets` cannot read: {str(err).strip().splitlines()[0]}") from None


def _peek(root: Path) -> tuple[bool, str]:
    """Look for a parquet file near the top of ``root``, breadth first, at most :data:`PEEK_ENTRIES` entries.

    Returns (found, what was seen), so a folder that is not a dataset is refused in a moment even when it
    is a huge tree (an ImageNet folder, a home directory), with a description of what it holds.
    """
    from collections import Counter

    level, depth, seen = [root], 0, 0
    folders: list[str] = []
    kinds: Counter = Counter()
    while level and depth <= PEEK_DEPTH:
        deeper = []
        for folder in level:
            try:
                with os.scandir(folder) as it:  # never more than what is left of the budget, even from a flat folder of millions
                    entries = sorted(itertools.islice(it, PEEK_ENTRIES - seen + 1), key=lambda e: e.name)
            except OSError:
                continue
            for e in entries:
                if e.name.startswith("."):  # .git, .cache/huggingface (snapshot_download), temporary shards
                    continue
                seen += 1
                if e.is_dir():  # symlinks followed: depth-limited, and the Hub cache links its files
                    deeper.append(e.path)
                    if depth == 0:
                        folders.append(e.name + "/")
                else:
                    suffix = Path(e.name).suffix.lower()
                    if suffix == ".parquet":
                        return True, ""
                    kinds[suffix or e.name] += 1
                if seen >= PEEK_ENTRIES:
                    return False, _describe(folders, kinds, f"no .parquet file among the first {PEEK_ENTRIES} entries")
        level, depth = deeper, depth + 1
    return False, _describe(folders, kinds, f"no .parquet file within {PEEK_DEPTH} folder levels")


def _describe(folders: list[str], kinds, verdict: str) -> str:
    parts = []
    if folders:
        parts.append(f"{len(folders)} folder(s) at the top ({', '.join(folders[:4])}{', ...' if len(folders) > 4 else ''})")
    if kinds:
        parts.append("files: " + ", ".join(f"{n} {k}" for k, n in kinds.most_common(4)))
    return f"found {'; '.join(parts) if parts else 'nothing (an empty folder)'}; {verdict}"


def find_splits(root: str | Path) -> dict[str, list[Path]]:
    """The splits of a local dataset folder and their parquet files (absolute paths): the one place that decides.

    1. the project's own shards (``data/<split>-<first>-<last>.parquet``, what ``d3s generate``, ``d3s toy``
       and ``d3s split`` write): listed directly, the fast path;
    2. otherwise the layout ``datasets.load_dataset(FOLDER)`` would read, resolved by ``datasets`` itself: the
       ``configs`` of the card's YAML if any, else its default patterns (``data/train-00000-of-00001.parquet``
       as ``push_to_hub`` and ``snapshot_download`` leave it, ``train/*.parquet``, ``train.parquet``...).

    Before asking ``datasets`` (whose default patterns glob the whole tree), a folder without a card must show a
    parquet file near its top (:func:`_peek`). Raises :class:`DatasetFormatError` saying what was found.
    """
    from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns, sanitize_patterns

    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root} is {'a file' if root.exists() else 'not a folder'}; give a dataset folder or a Hub dataset id.")
    ours: dict[str, list[Path]] = {}
    for p in shard_paths(root):
        ours.setdefault(_SHARD_RE.match(p.name).group("split"), []).append(p.resolve())
    if ours:
        return dict(sorted(ours.items()))
    configs = _card_configs(root)
    base = str(root.resolve())
    if configs and any("data_files" in c for c in configs.values()):
        try:
            name = configs.get_default_config_name()
        except ValueError as err:
            raise DatasetFormatError(f"{root}/README.md: {err}") from None
        if name is None:
            raise DatasetFormatError(f"{root}/README.md declares several configs ({', '.join(configs)}) and none is the default; "
                                     "d3s reads the default config (mark one `default: true`).")
        patterns = sanitize_patterns(configs[name].get("data_files", []))
    else:
        found, seen = _peek(root)
        if not found:
            raise DatasetFormatError(f"{root} is not a parquet dataset: {seen} (make one with `d3s generate` or `d3s toy`, "
                                     "or give a folder as `push_to_hub` / `snapshot_download` leave it).")
        try:
            patterns = get_data_patterns(base)
        except EmptyDatasetError:
            raise DatasetFormatError(f"{root} holds no data files that `datasets` recognises.") from None
    try:
        files = DataFilesDict.from_patterns(patterns, base_path=base)
    except FileNotFoundError as err:
        raise DatasetFormatError(f"{root}: {str(err).splitlines()[0]}") from None
    splits = {str(s): [Path(f) for f in fs if f.endswith(".parquet")] for s, fs in files.items()}
    splits = {s: sorted(fs) for s, fs in splits.items() if fs}
    if not splits:
        from collections import Counter

        kinds = Counter(Path(f).suffix.lower() or Path(f).name for fs in files.values() for f in fs)
        raise DatasetFormatError(f"{root} holds data files but no parquet ({', '.join(f'{n} {k}' for k, n in kinds.most_common(4))}); "
                                 "d3s reads parquet datasets with image, fg and bg columns.")
    return splits


HUB_PATTERNS = ["*.parquet", "**/*.parquet", "README.md", "*.json"]  # what the commands read of a Hub dataset


def local_folder(data: str | Path, token: str | bool | None = None, max_bytes: int | None = None) -> Path:
    """A local folder for ``data``: the folder itself, or a Hub dataset id (``ORG/NAME``) downloaded with
    ``snapshot_download`` (its parquet files, card and JSON records), for the commands that read files directly.

    Args:
        token (`str` or `bool`, *optional*): passed to the Hub (``False``: send none, e.g. a public app that must
            not reach private or gated data with its operator's token; ``None``: the logged-in one).
        max_bytes (`int`, *optional*): refuse a Hub dataset whose files to download add up to more, before
            downloading anything (sizes from ``HfApi.dataset_info``).
    """
    path = Path(data)
    if path.exists():
        return path
    text = str(data)
    if not HUB_ID.fullmatch(text):
        raise DatasetFormatError(f"{text} does not exist, and is not a Hub dataset id (ORG/NAME).")
    from fnmatch import fnmatch

    from huggingface_hub import HfApi, snapshot_download

    try:
        revision = None
        if max_bytes is not None:
            info = HfApi().dataset_info(text, files_metadata=True, token=token)
            size = sum(f.size or 0 for f in info.siblings or [] if any(fnmatch(f.rfilename, p) for p in HUB_PATTERNS))
            if size > max_bytes:
                raise DatasetFormatError(f"The Hub dataset {text} is {size / 2**30:.1f} GiB, over the limit of "
                                         f"{max_bytes / 2**30:.1f} GiB set for this reader.")
            revision = info.sha  # download exactly what was measured
        return Path(snapshot_download(text, repo_type="dataset", revision=revision, allow_patterns=HUB_PATTERNS, token=token))
    except DatasetFormatError:
        raise
    except Exception as err:  # offline, unknown repo, no access: say which
        raise DatasetFormatError(f"{text} is not a local folder, and the Hub dataset {text!r} could not be fetched: "
                                 f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}") from None


def split_files(root: str | Path, split: str) -> list[Path]:
    """The parquet files of one split of a local folder; refuses a missing split, naming the splits found."""
    splits = find_splits(root)
    if split not in splits:
        raise DatasetFormatError(f"{root} has no {split!r} split (found: {', '.join(splits)}).")
    return splits[split]


def load_raw(root: str | Path, split: str | None = None, cache_dir: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """``datasets.load_dataset`` for a local dataset folder (any layout :func:`find_splits` accepts) or a Hub id,
    with no check of the columns; ``cache_dir`` is where ``datasets`` keeps its Arrow copy (default: its cache).

    A local folder is loaded from its parquet files by absolute path: ``load_dataset(FOLDER)`` keys its cache by
    the folder's name and card, so two folders called ``d3s`` with the same card would share a stale cache.
    """
    import datasets

    local = Path(root)
    if local.exists():
        files = {split: split_files(local, split)} if split else find_splits(local)
        return datasets.load_dataset("parquet", data_files={s: [str(p) for p in fs] for s, fs in files.items()}, split=split,
                                     cache_dir=cache_dir)
    if not HUB_ID.fullmatch(str(root)):
        raise DatasetFormatError(f"{root} does not exist, and is not a Hub dataset id (ORG/NAME).")
    return datasets.load_dataset(str(root), split=split, cache_dir=cache_dir)


def load(root: str | Path, split: str | None = None) -> datasets.Dataset | datasets.DatasetDict:
    """Load a d3s folder (or a Hub dataset id) with ``datasets.load_dataset``; checks the label columns."""
    root_s = str(root)
    ds = load_raw(root_s, split=split)
    for part in ([ds] if split else ds.values()):
        check_labels(part, root_s)
    return ds


def check_labels(ds: datasets.Dataset, where: str = "dataset") -> None:
    """Refuse a dataset without ``fg``/``bg`` ClassLabel columns, saying what it has instead."""
    import datasets

    for col in ("fg", "bg"):
        feat = ds.features.get(col)
        if not isinstance(feat, datasets.ClassLabel):
            raise DatasetFormatError(
                f"{where} has no {col!r} ClassLabel column (columns: {', '.join(ds.column_names)}); d3s needs 'image', 'fg' and 'bg'."
            )
