"""Publishing to the Hugging Face Hub: stage the exact repository folder, check it, then upload it.

Every publish is two steps. ``stage_*`` writes the repository folder locally with no network (what
``--dry-run DIR`` keeps); ``upload_folder`` pushes it. Bad input fails in the staging step, before any
upload. Tokens come from ``HF_TOKEN`` or ``huggingface-cli login`` through huggingface_hub itself and
are never printed.
"""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .dataset import DATA_DIR, DatasetFormatError, shard_paths, splits_in, write_card

REQUIRED_SPLITS = ("train", "validation", "benchmark")
PAPER_CITATION = """@article{kattakinda2022d3s,
  title   = {Invariant Learning via Diffusion Dreamed Distribution Shifts},
  author  = {Kattakinda, Priyatham and Levine, Alexander and Feizi, Soheil},
  journal = {arXiv preprint},
  year    = {2022}
}"""


class PublishError(ValueError):
    """Something to fix before publishing; nothing was uploaded."""


def _check_repo_id(repo_id: str) -> None:
    parts = (repo_id or "").split("/")
    if len(parts) != 2 or not all(parts):
        raise PublishError(f"--repo-id must look like ORG/NAME, got {repo_id!r}.")


def _image_ok(cell) -> bool:
    if not cell or not cell.get("bytes"):
        return False
    try:
        with Image.open(io.BytesIO(cell["bytes"])) as im:
            im.load()
        return True
    except Exception:  # any decoder failure means a corrupt row
        return False


def _clean_shard(path: Path, target: Path, problems: list[str]) -> tuple[int, pa.Table]:
    """Copy a shard without rows whose image does not decode; each skipped row is reported."""
    table = pq.read_table(path)
    cells = table.column("image").to_pylist()
    good = [i for i, cell in enumerate(cells) if _image_ok(cell)]
    for i in sorted(set(range(len(cells))) - set(good)):
        problems.append(f"{path.name} row {i}: image does not decode, skipped")
    kept = table.take(pa.array(good, type=pa.int64())) if len(good) < len(cells) else table
    kept = kept.replace_schema_metadata(table.schema.metadata)
    pq.write_table(kept, target)
    return len(cells) - len(good), kept


def _example_grid(tables: list[pa.Table], bg_names: list[str], per_bg: int = 1, side: int = 128) -> Image.Image | None:
    """One example image per background (first found), side by side."""
    picks: dict[int, Image.Image] = {}
    for t in tables:
        for bg, cell in zip(t.column("bg").to_pylist(), t.column("image").to_pylist()):
            if bg not in picks and _image_ok(cell):
                picks[bg] = Image.open(io.BytesIO(cell["bytes"])).convert("RGB").resize((side, side))
        if len(picks) == len(bg_names):
            break
    if not picks:
        return None
    grid = Image.new("RGB", (side * len(picks), side), "white")
    for k, bg in enumerate(sorted(picks)):
        grid.paste(picks[bg], (k * side, 0))
    return grid


def stage_dataset(data: str | Path, out: str | Path, repo_id: str, required_splits=REQUIRED_SPLITS,
                  license: str = "cc-by-4.0", progress: bool = True) -> dict:
    """Write the dataset repository folder for ``repo_id`` into ``out``; returns a report.

    Checks, before anything is written: ``data`` is a d3s dataset folder with ``fg``/``bg`` labels and the
    required splits. Corrupt image rows are reported (shard and row) and skipped, with a count.
    """
    import datasets
    from tqdm.auto import tqdm

    _check_repo_id(repo_id)
    data, out = Path(data), Path(out)
    present = splits_in(data)
    if not present:
        raise PublishError(f"{data} is not a d3s dataset folder: no parquet shards under {DATA_DIR}/.")
    missing = [s for s in required_splits if s not in present]
    if missing:
        raise PublishError(f"{data} lacks the split(s) {', '.join(missing)} (has {', '.join(present)}); "
                           f"run `d3s split --data GENERATED --out {data}` first, or pass --splits.")
    schema = pq.read_schema(shard_paths(data)[0])
    feats = datasets.Features.from_arrow_schema(schema)
    for col in ("image", "fg", "bg"):
        if col not in feats or (col != "image" and not isinstance(feats[col], datasets.ClassLabel)):
            raise PublishError(f"{data} has no {col!r} {'column' if col == 'image' else 'ClassLabel'}; a D3S dataset needs image, fg and bg.")
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty; give a new folder for the staged repository.")

    (out / DATA_DIR).mkdir(parents=True)
    problems: list[str] = []
    counts: dict[str, dict] = {}
    skipped = 0
    all_tables = []
    for split in present:
        per_bg: Counter = Counter()
        rows = 0
        for path in tqdm(shard_paths(data, split), desc=f"checking {split}", disable=not progress):
            n_bad, table = _clean_shard(path, out / DATA_DIR / path.name, problems)
            skipped += n_bad
            rows += table.num_rows
            per_bg.update(feats["bg"].names[b] for b in table.column("bg").to_pylist())
            all_tables.append(table)
        counts[split] = {"rows": rows, "per_background": {b: per_bg.get(b, 0) for b in feats["bg"].names}}

    grid = _example_grid(all_tables, feats["bg"].names)
    if grid is not None:
        (out / "examples").mkdir()
        grid.save(out / "examples" / "backgrounds.png")
    manifest = json.loads((data / "d3s_run.json").read_text()) if (data / "d3s_run.json").exists() else None
    split_report = json.loads((data / "split_report.json").read_text()) if (data / "split_report.json").exists() else None
    body = dataset_card_body(repo_id, counts, feats["bg"].names, manifest, split_report, has_examples=grid is not None)
    write_card(out, feats, body, extra_yaml={
        "license": license, "pretty_name": "D3S: Diffusion Dreamed Distribution Shifts",
        "task_categories": ["image-classification"], "tags": ["distribution-shift", "synthetic", "stable-diffusion", "imagenet", "d3s"],
        "size_categories": [_size_category(sum(c["rows"] for c in counts.values()))],
    })
    return {"repo_id": repo_id, "folder": str(out), "splits": counts, "skipped_rows": skipped, "problems": problems}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def dataset_card_body(repo_id: str, counts: dict, bg_names: list[str], manifest: dict | None, split_report: dict | None,
                      has_examples: bool) -> str:
    s = (manifest or {}).get("settings", {})
    generation = (
        f"| model | `{s.get('model', '?')}` |\n| scheduler | {s.get('scheduler', '?')} (eta 0) |\n"
        f"| steps x strength | {s.get('steps', '?')} x {s.get('strength', '?')} |\n| guidance scale | {s.get('guidance', '?')} |\n"
        f"| size | {s.get('size', '?')} px |\n| run seed | {s.get('seed', '?')} (each row has its own `seed`) |\n"
        f"| prompt | `{(s.get('recipe') or {}).get('prompt', 'a photo of a {name}, {definition}, {shift}')}` |"
    ) if manifest else "| generation settings | not recorded (no `d3s_run.json`) |"
    header = "| background | " + " | ".join(counts) + " |\n|---|" + "---|" * len(counts)
    table = "\n".join(f"| {b} | " + " | ".join(str(c["per_background"][b]) for c in counts.values()) + " |" for b in bg_names)
    totals = "| **total** | " + " | ".join(str(c["rows"]) for c in counts.values()) + " |"
    if split_report:
        removed = ", ".join(f"{k}: {v}" for k, v in split_report.get("removed", {}).items()) or "none"
        checked = f"The `benchmark` split is the `validation` images that pass {split_report['basis']}; removed: {removed}."
    else:
        checked = "No split report was found: how the benchmark split was checked is not recorded."
    examples = "![one image per background](examples/backgrounds.png)\n" if has_examples else ""
    return f"""# D3S: Diffusion Dreamed Distribution Shifts

Images of the 1000 ImageNet classes on ten backgrounds ({", ".join(bg_names)}), generated with Stable Diffusion
image-to-image from a guide (an ImageNet photo pasted on a background template) and the prompt
`a photo of a {{class}}, {{WordNet definition}}, {{background}}`, after *Invariant Learning via Diffusion Dreamed
Distribution Shifts*. Every (class, background) pair is generated, so foreground and background are independent.

{examples}
## Load

```python
from datasets import load_dataset
ds = load_dataset("{repo_id}", split="benchmark")
image, fg, bg = ds[0]["image"], ds.features["fg"].int2str(ds[0]["fg"]), ds.features["bg"].int2str(ds[0]["bg"])
```

## Generation

| setting | value |
|---|---|
{generation}

Each row also records its `prompt`, `seed`, `photo`, `template` and `paste_box`: `d3s regenerate` remakes any image from them.

## Splits and counts

{header}
{table}
{totals}

## Quality control

{checked} The paper's people-checked benchmark removed 10.2% of images for a missing foreground and about 1% as unsafe.

## Features

`image`; `fg` (ClassLabel, the 1000 ImageNet classes, ImageNet index order); `bg` (ClassLabel, the backgrounds);
`prompt`; `seed`; provenance and check columns.

## Licence and citation

Images generated with Stable Diffusion (CreativeML OpenRAIL-M); dataset released under the licence in the YAML header.

```bibtex
{PAPER_CITATION}
```
"""


def upload_folder(folder: str | Path, repo_id: str, repo_type: str, private: bool = False, token: str | None = None) -> str:
    """Create the repository if needed and upload the staged folder; returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                      commit_message="Publish with d3s")
    return str(url)


def staging_dir(dry_run: str | None) -> tuple[Path, bool]:
    """The folder to stage in: the ``--dry-run`` folder (kept) or a temporary one (removed after upload)."""
    if dry_run:
        return Path(dry_run), False
    import tempfile

    return Path(tempfile.mkdtemp(prefix="d3s-publish-")), True


def cleanup(path: Path, temporary: bool) -> None:
    if temporary:
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["PublishError", "stage_dataset", "upload_folder", "staging_dir", "cleanup", "DatasetFormatError"]
