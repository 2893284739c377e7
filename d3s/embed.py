"""``d3s embed``: a frozen backbone's features of every split of a dataset, as a features dataset.

::

    d3s embed --data d3s/ --backbone vit_base_patch14_dinov2.lvd142m --out d3s-dinov2/
    d3s train --data d3s-dinov2/ --out wd-dinov2/        # neck, heads and critics only: minutes, not days

A run reads as the steps of :func:`embed`:

1. check the settings, build the backbone (any timm name, ``hf-hub:``, ``local-dir:DIR``) and resolve
   its own eval preprocessing (timm's ``resolve_data_config``), open every split of the data;
2. open the output folder: its ``d3s_embed.json`` must match the settings (a folder made otherwise
   is refused with the differences), finished chunks are skipped;
3. cut each split into fixed chunks of ``shard_size`` rows and share the unfinished ones among
   processes (``accelerate launch``), round-robin;
4. per chunk: decode and resize the images (threads, timm's eval transform, as ``d3s benchmark``),
   run the backbone in batches (channels-last and bf16 on CUDA), write the chunk as one shard,
   atomically, named by its first and last row: a killed run, rerun, ends with exactly one row per
   image, the same rows an uninterrupted run writes;
5. the card, and ``d3s_embed.json`` with the row counts.

The output is in the project's dataset layout: each row has ``features`` (float32, the backbone's
feature size), the source's ``fg`` (ImageNet-style ``label`` is written as ``fg``) and ``bg`` labels,
``row`` (the row's index in its source split) and the source's ``item_id`` when it has one.
``d3s_embed.json`` records the backbone's name, pretrained flag, feature size and preprocessing, so
``d3s train`` and :func:`d3s.models.load_extractor` know which backbone made the features.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import write_card

EMBED_JSON = "d3s_embed.json"
KEY = "row"  # the row's index in its source split: the shard key
_SETTINGS = ("source", "backbone", "pretrained", "feature_dim", "preprocessing", "shard_size", "precision")


class EmbedError(ValueError):
    """Bad input to ``d3s embed``; raised before any image is decoded."""


@dataclass
class EmbedConfig:
    """Settings of ``d3s embed`` (each default is the command line's).

    Args:
        data (`str`): an image dataset (folder or Hub id) with ``image`` and ``fg`` (or ``label``) columns.
        out (`str`): output folder (see the module docstring).
        backbone (`str`): timm model name, ``hf-hub:ORG/NAME`` or ``local-dir:DIR`` (config.json + model.safetensors).
        pretrained (`bool`, defaults to True): the backbone's pretrained weights (False: random, for tests).
        image_size (`int`, *optional*): input side; defaults to the backbone's own (its pretrained config).
        batch_size (`int`, defaults to 256): images per forward pass (halved on out-of-memory).
        shard_size (`int`, defaults to 2048): source rows per chunk, each written as one shard; fixed for a folder.
        workers (`int`, defaults to 4): image decoding threads.
        device (`str`, defaults to ``"auto"``): torch device; under ``accelerate launch`` each process takes its GPU.
        precision (`str`, defaults to ``"auto"``): ``fp32``, ``bf16`` or ``fp16`` (autocast); ``auto`` is bf16 on CUDA and
            fp32 elsewhere. The precision used is recorded in the folder's manifest; a folder is resumed at its own.
    """

    data: str
    out: str
    backbone: str
    pretrained: bool = True
    image_size: int | None = None
    batch_size: int = 256
    shard_size: int = 2048
    workers: int = 4
    device: str = "auto"
    progress: bool = True
    precision: str = "auto"

    def check(self) -> None:
        for name in ("batch_size", "shard_size", "workers"):
            if getattr(self, name) < 1:
                raise EmbedError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.image_size is not None and self.image_size < 8:
            raise EmbedError(f"--image-size must be at least 8 pixels, got {self.image_size}.")


def read_embed_info(data: str) -> dict | None:
    """The ``d3s_embed.json`` of a features dataset (folder or Hub id), or None (not made by ``d3s embed``)."""
    local = Path(data)
    if local.exists():
        path = local / EMBED_JSON
        return json.loads(path.read_text()) if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(data, EMBED_JSON, repo_type="dataset")).read_text())
    except (OSError, ValueError):  # not there, offline
        return None


# --- 1. inputs -----------------------------------------------------------------------------------------

def open_splits(data: str) -> dict:
    """Every split of the image dataset ``data``, checked (labels, an ``image`` column)."""
    import datasets

    from .data import is_features, load_split
    from .dataset import DatasetFormatError, load_raw

    datasets.disable_progress_bars()  # "Generating split" bars would bury our own output and errors
    try:
        names = list(load_raw(data).keys())
    except (ValueError, FileNotFoundError) as err:
        raise DatasetFormatError(f"cannot load {data}: {str(err).splitlines()[0]}") from None
    splits = {name: load_split(data, name, need_bg=False) for name in names}
    for name, ds in splits.items():
        if is_features(ds):
            raise EmbedError(f"{data} ({name}) already holds features, not images; embed the image dataset they came from.")
        if "image" not in ds.column_names:
            raise EmbedError(f"{data} ({name}) has no 'image' column (columns: {', '.join(ds.column_names)}).")
    return splits


def features_schema(source, feature_dim: int):
    """The row schema of a split's features: key, source item id, features, labels."""
    import datasets

    from .data import fg_column

    cols = {KEY: datasets.Value("int64")}
    if "item_id" in source.column_names:
        cols["item_id"] = datasets.Value("int64")
    cols["features"] = datasets.List(datasets.Value("float32"), length=feature_dim)
    cols["fg"] = source.features[fg_column(source)]
    if "bg" in source.column_names:
        cols["bg"] = source.features["bg"]
    return datasets.Features(cols)


# --- 2. output folder ---------------------------------------------------------------------------------

def _source(data: str) -> str:
    return os.path.abspath(data) if Path(data).exists() else data


def check_output(out: Path, settings: dict) -> None:
    """Refuse a folder made with other settings, or one that is not a ``d3s embed`` folder (reads only)."""
    path = out / EMBED_JSON
    if path.exists():
        old = json.loads(path.read_text())
        old.setdefault("precision", settings["precision"])  # folders made before the precision was recorded resume at this one
        diff = [k for k in _SETTINGS if old.get(k) != settings[k]]
        if diff:
            shown = "; ".join(f"{k}: folder has {json.dumps(old.get(k))}, this run asks {json.dumps(settings[k])}" for k in diff)
            raise EmbedError(f"{out} holds features made with other settings ({shown}); rerun with its settings to resume it, "
                             "or choose another --out.")
    elif out.exists() and any(out.iterdir()):
        raise EmbedError(f"{out} exists and is not a `d3s embed` folder (no {EMBED_JSON}); choose an empty or new --out.")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# --- 3-4. chunks --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Chunk:
    split: str
    start: int
    stop: int


def remaining_chunks(out: Path, splits: dict, shard_size: int) -> list[Chunk]:
    """The chunks of every split not yet written (a chunk is written whole, as one shard, or not at all)."""
    from .generate import finished_items

    todo = []
    for name, ds in splits.items():
        done = finished_items(out, name, key=KEY)
        todo += [Chunk(name, s, min(s + shard_size, len(ds))) for s in range(0, len(ds), shard_size)
                 if not all(r in done for r in range(s, min(s + shard_size, len(ds))))]
    return todo


def decode_chunk(chunk: Chunk, ds, data_config: dict, workers: int) -> np.ndarray:
    """uint8 ``(N, 3, H, W)`` images of a chunk, with the backbone's eval transform (as ``d3s benchmark``)."""
    import datasets

    from .imagesets import ImageSet, decode

    cells = ds.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))[chunk.start:chunk.stop]["image"]
    items = [c["bytes"] if c.get("bytes") is not None else c["path"] for c in cells]
    images = ImageSet(chunk.split, "", np.arange(len(items)), lambda a, b: items[a:b])  # labels are not needed to decode
    return decode(images, data_config, workers=workers)


def chunk_table(chunk: Chunk, ds, schema, features: np.ndarray):
    """The Arrow table of a chunk's rows (features straight from the array, no Python lists)."""
    import pyarrow as pa

    from .data import fg_column

    part = ds.select_columns([c for c in ("item_id", fg_column(ds), "bg") if c in ds.column_names])[chunk.start:chunk.stop]
    dim = features.shape[1]
    values = {
        KEY: pa.array(np.arange(chunk.start, chunk.stop), pa.int64()),
        "item_id": pa.array(part.get("item_id", []), pa.int64()),
        "features": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1), pa.float32()), dim),
        "fg": pa.array(part[fg_column(ds)], pa.int64()),
        "bg": pa.array(part.get("bg", []), pa.int64()),
    }
    arrow = schema.arrow_schema
    return pa.Table.from_arrays([values[name].cast(arrow.field(name).type) for name in arrow.names], schema=arrow)


# --- the run ------------------------------------------------------------------------------------------

def embed(config: EmbedConfig, stop_after: int | None = None) -> dict:
    """Embed (or finish embedding) every split of ``config.data``; returns a summary.

    ``stop_after`` ends this invocation after that many chunks (for time-sliced jobs and tests of
    resuming); rerunning the same settings continues.
    """
    from tqdm.auto import tqdm

    from .inference import resolve_device, resolve_precision, run_batches
    from .dataset import read_column, remove_partial_files, shard_paths, write_table
    from .generate import distributed_state
    from .models import create_backbone, preprocessing_of

    # 1. inputs
    config.check()
    net = create_backbone(config.backbone, pretrained=config.pretrained).eval()
    prep = preprocessing_of(net, config.image_size)
    splits = open_splits(config.data)
    dim = int(net.num_features)
    settings = {"source": _source(config.data), "backbone": config.backbone, "pretrained": config.pretrained,
                "feature_dim": dim, "preprocessing": prep, "shard_size": config.shard_size}
    schemas = {name: features_schema(ds, dim) for name, ds in splits.items()}

    # 2. output folder
    out = Path(config.out)
    rank, world, barrier, device = distributed_state()
    device = device or resolve_device(config.device)
    settings["precision"] = resolve_precision(config.precision, device)
    check_output(out, settings)  # every process checks before any waits, so a refusal never leaves one hanging,
    barrier()  # and before any writes, so every process judges the same folder
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / EMBED_JSON).exists():
            _write_json(out / EMBED_JSON, _manifest(settings, None))
        remove_partial_files(out)
    barrier()

    # 3. this process's chunks: the main process looks first (it sets unreadable shards aside), then the others
    todo = remaining_chunks(out, splits, config.shard_size) if rank == 0 else None
    barrier()
    todo = todo if todo is not None else remaining_chunks(out, splits, config.shard_size)
    barrier()  # every process has read the same folder before any writes to it
    already = sum(len(ds) for ds in splits.values()) - sum(c.stop - c.start for c in todo)
    mine = todo[rank::world][:stop_after]

    # 4. decode (one chunk ahead, in threads) -> backbone -> one shard per chunk
    bar = tqdm(total=sum(c.stop - c.start for c in mine), unit="img", desc=f"embedding with {config.backbone}",
               disable=not (config.progress and rank == 0), dynamic_ncols=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(decode_chunk, mine[0], splits[mine[0].split], prep, config.workers) if mine else None
        for k, chunk in enumerate(mine):
            images = pending.result()
            if k + 1 < len(mine):
                nxt = mine[k + 1]
                pending = pool.submit(decode_chunk, nxt, splits[nxt.split], prep, config.workers)
            features = np.empty((len(images), dim), dtype=np.float32)

            def keep(start: int, stop: int, output, features=features) -> None:
                features[start:stop] = output.float().cpu().numpy()

            run_batches(net, prep, images, keep, config.batch_size, device, precision=settings["precision"])
            write_table(out, chunk.split, chunk_table(chunk, splits[chunk.split], schemas[chunk.split], features), key=KEY)
            bar.update(len(images))
    bar.close()

    # 5. card and counts
    barrier()
    summary = {"embedded": sum(c.stop - c.start for c in mine), "already_done": already, "rank": rank}
    if rank == 0:
        rows = {name: len(read_column(shard_paths(out, name), KEY)[0]) for name in splits}
        _write_json(out / EMBED_JSON, _manifest(settings, rows))
        write_card(out, next(iter(schemas.values())), card_body(settings, rows), extra_yaml={"d3s_embed": _card_meta(settings)})
        summary.update(rows=rows, done=all(rows[name] == len(ds) for name, ds in splits.items()))
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    return summary


def _manifest(settings: dict, rows: dict | None) -> dict:
    import timm

    from . import __version__

    return {**settings, "rows": rows, "versions": {"d3s": __version__, "timm": timm.__version__}}


def _card_meta(settings: dict) -> dict:
    return {k: settings[k] for k in ("backbone", "pretrained", "feature_dim", "preprocessing")}


def card_body(settings: dict, rows: dict) -> str:
    p = settings["preprocessing"]
    counts = ", ".join(f"{name} {n}" for name, n in rows.items())
    return f"""# Frozen features of `{settings['backbone']}`

Each row holds `features`: the {settings['feature_dim']} pooled features of `{settings['backbone']}`
({'pretrained weights' if settings['pretrained'] else 'random weights'}) for one image of `{settings['source']}`,
with its `fg` and `bg` labels and `row`, its index in the source split. Made by `d3s embed`; rows: {counts}.

Preprocessing (timm's eval transform of the backbone): input {p['input_size'][1]}x{p['input_size'][2]},
{p['interpolation']} resize, centre crop {p['crop_pct']}, mean {p['mean']}, std {p['std']}.

Disentangle them with `d3s train --data THIS_FOLDER --out RUN` (neck, heads and critics only); the checkpoint
plus this backbone loads as an image extractor (`d3s.models.load_extractor(RUN)`). Settings: `{EMBED_JSON}`.
"""


__all__ = ["EmbedConfig", "EmbedError", "embed", "read_embed_info", "EMBED_JSON"]
