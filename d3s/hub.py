"""Publishing to the Hugging Face Hub: stage the exact repository folder, check it, then upload it.

Every publish is two steps. ``stage_*`` writes the repository folder locally with no network (what
``--dry-run DIR`` keeps); :func:`upload_folder` pushes it. Bad input fails in the staging step, before any
upload. The cards are ``huggingface_hub``'s own ``ModelCard`` / ``DatasetCard``: a checkpoint's results are
its ``model-index`` (``eval_results``, which the Hub renders), and a dataset card says what the staged folder
holds, counted from its rows. Tokens come from ``HF_TOKEN`` or ``hf auth login`` through huggingface_hub
itself and are never printed.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .curate import empty_split_note
from .dataset import (HUB_ID, DATA_DIR, DatasetFormatError, card_metadata, find_splits, is_shard_name, local_folder,
                      shard_name)

REQUIRED_SPLITS = ("train", "validation", "benchmark")
PAPER_CITATION = """@article{kattakinda2022d3s,
  title   = {Invariant Learning via Diffusion Dreamed Distribution Shifts},
  author  = {Kattakinda, Priyatham and Levine, Alexander and Feizi, Soheil},
  journal = {arXiv preprint},
  year    = {2022}
}"""
STAGED_RECORD = ".d3s-staged.json"  # in a kept staging folder: what was staged there (never uploaded)
_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")


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


def _pick_examples(table: pa.Table, picks: dict[int, Image.Image], n_backgrounds: int, side: int = 128) -> None:
    """Add to ``picks`` the first decodable image of each background not picked yet (one shard at a time)."""
    if len(picks) >= n_backgrounds:
        return
    for bg, cell in zip(table.column("bg").to_pylist(), table.column("image").to_pylist()):
        if bg is not None and bg >= 0 and bg not in picks and _image_ok(cell):
            picks[bg] = Image.open(io.BytesIO(cell["bytes"])).convert("RGB").resize((side, side))


def _example_grid(picks: dict[int, Image.Image], side: int = 128) -> Image.Image | None:
    """The picked images side by side, in background order; None when there are none."""
    if not picks:
        return None
    grid = Image.new("RGB", (side * len(picks), side), "white")
    for k, bg in enumerate(sorted(picks)):
        grid.paste(picks[bg], (k * side, 0))
    return grid


def _missing_splits_error(data: Path, missing: list[str], present: list[str], split_report: dict | None) -> PublishError:
    """The error for a folder without the required splits, with the exact command that makes them."""
    keep = f"or pass --splits {','.join(present)} to publish the splits it has."
    note = empty_split_note(data)
    if note and "validation" in missing:  # `d3s split` ran and left validation (and so the benchmark) empty
        source = (split_report or {}).get("source") or "GENERATED"
        retry = data.with_name(data.name + "-resplit")
        suggested = re.search(r"--validation-fraction (\d+(?:\.\d+)?)", note)
        if suggested:
            fix = (f"Rerun `d3s split --data {source} --out {retry} --validation-fraction {suggested.group(1)}` and publish "
                   f"{retry}, ")
        else:  # cells of one image: no fraction helps
            fix = (f"Generate at least 2 images per pair into {source}, rerun `d3s split --data {source} --out {retry}` "
                   f"and publish {retry}, ")
        return PublishError(f"{data} has no {', '.join(missing)} rows: `d3s split` left them empty ({note}) {fix}{keep}")
    return PublishError(f"{data} lacks the split(s) {', '.join(missing)} (has {', '.join(present)}); run "
                        f"`d3s split --data {data} --out {data.with_name(data.name + '-splits')}` and publish that folder, {keep}")


def stage_dataset(data: str | Path, out: str | Path, repo_id: str, required_splits=REQUIRED_SPLITS,
                  license: str = "cc-by-4.0", progress: bool = True) -> dict:
    """Write the dataset repository folder for ``repo_id`` into ``out``; returns a report.

    ``data`` is a local dataset folder in any parquet layout ``datasets`` reads (see :func:`d3s.dataset.find_splits`)
    or a Hub dataset id. Checks, before anything is written: it has ``fg``/``bg`` labels and the required splits.
    Corrupt image rows are reported (shard and row) and skipped, with a count. The card
    (:func:`dataset_card`) describes the rows staged, counted as they are copied.

    Args:
        data (`str` or `Path`): the dataset folder or Hub dataset id.
        out (`str` or `Path`): a new or empty folder for the repository.
        repo_id (`str`): ``ORG/NAME``, named by the card's load snippet.
        required_splits (`Sequence[str]`, defaults to train, validation and benchmark): splits that must be present.
        license (`str`, defaults to ``"cc-by-4.0"``): the card's licence.
        progress (`bool`, defaults to `True`): progress bars.
    """
    import datasets
    from tqdm.auto import tqdm

    _check_repo_id(repo_id)
    out = Path(out)
    try:
        data = local_folder(data)
        files = find_splits(data)
    except DatasetFormatError as err:
        raise PublishError(f"{data} is not a d3s dataset folder: {err}") from None
    present = [s for s in REQUIRED_SPLITS if s in files] + [s for s in files if s not in REQUIRED_SPLITS]
    split_report = json.loads((data / "split_report.json").read_text()) if (data / "split_report.json").exists() else None
    missing = [s for s in required_splits if s not in present]
    if missing:
        raise _missing_splits_error(Path(data), missing, present, split_report)
    schema = pq.read_schema(files[present[0]][0])
    feats = datasets.Features.from_arrow_schema(schema)
    for col in ("image", "fg", "bg"):
        if col not in feats or (col != "image" and not isinstance(feats[col], datasets.ClassLabel)):
            raise PublishError(f"{data} has no {col!r} {'column' if col == 'image' else 'ClassLabel'}; a D3S dataset needs image, fg and bg.")
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty; give a new folder for the staged repository.")

    (out / DATA_DIR).mkdir(parents=True)
    bg_names = feats["bg"].names
    problems: list[str] = []
    counts: dict[str, dict] = {}
    rows_of: dict[str, dict[str, list]] = {}  # split -> its fg and bg columns, for the card's counts
    picks: dict[int, Image.Image] = {}
    skipped = 0
    for split in present:
        per_bg: Counter = Counter()
        columns: dict[str, list] = {"fg": [], "bg": []}
        for k, path in enumerate(tqdm(files[split], desc=f"checking {split}", disable=not progress)):
            # staged under the project's shard names, whatever the source layout, so the card's configs cover them
            name = path.name if is_shard_name(path.name) else shard_name(split, k, k)
            n_bad, table = _clean_shard(path, out / DATA_DIR / name, problems)
            skipped += n_bad
            for col in ("fg", "bg"):
                columns[col].extend(table.column(col).to_pylist())
            per_bg.update(bg_names[b] for b in columns["bg"][-table.num_rows:] if b is not None and b >= 0)
            _pick_examples(table, picks, len(bg_names))
        counts[split] = {"rows": len(columns["fg"]), "per_background": {b: per_bg.get(b, 0) for b in bg_names}}
        rows_of[split] = columns

    grid = _example_grid(picks)
    if grid is not None:
        (out / "examples").mkdir()
        grid.save(out / "examples" / "backgrounds.png")
    manifest = json.loads((data / "d3s_run.json").read_text()) if (data / "d3s_run.json").exists() else None
    if split_report:
        (out / "split_report.json").write_text(json.dumps(split_report, indent=2))  # how the benchmark split was checked
    subsets = ("benchmark",) if split_report and "validation" in present else ()  # `d3s split`: benchmark rows are validation rows
    facts = dataset_facts(rows_of, feats, subsets)
    card = dataset_card(repo_id, out, feats, counts, facts, manifest, split_report, has_examples=grid is not None, license=license)
    card.save(out / "README.md")
    staged = ", ".join(f"{s} {c['rows']}" for s, c in counts.items())
    return {"repo_id": repo_id, "folder": str(out), "splits": counts, "skipped_rows": skipped, "problems": problems,
            "facts": facts,
            "summary": f"staged {staged} rows ({skipped} corrupt rows skipped) in {out}: {len(facts['classes'])} classes x "
                       f"{len(facts['backgrounds'])} backgrounds, {facts['pairs']} pairs with images"}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def dataset_facts(rows_of: dict[str, dict[str, list]], features, subsets: tuple[str, ...] = ()) -> dict:
    """What the staged rows hold, counted: the classes, backgrounds and (class, background) pairs that have images,
    overall and per split.

    Args:
        rows_of (`dict[str, dict[str, list]]`): per split, its ``fg`` and ``bg`` columns.
        features (`datasets.Features`): the dataset's features (the label names).
        subsets (`tuple[str]`, defaults to none): splits whose rows are rows of another split too (``benchmark``, made
            of ``validation`` rows by `d3s split`): counted per split, not again among the distinct images.
    """
    from .labels import imagenet_classes

    fg_names, bg_names = list(features["fg"].names), list(features["bg"].names)
    per_pair: Counter = Counter()
    splits = {}
    for split, cols in rows_of.items():
        labelled = [(f, b) for f, b in zip(cols["fg"], cols["bg"]) if f is not None and f >= 0 and b is not None and b >= 0]
        splits[split] = {"rows": len(cols["fg"]), "classes": len({f for f, _ in labelled}),
                         "backgrounds": len({b for _, b in labelled}), "pairs": len(set(labelled))}
        if split not in subsets:
            per_pair.update(labelled)
    return {"classes": [fg_names[f] for f in sorted({f for f, _ in per_pair})],
            "backgrounds": [bg_names[b] for b in sorted({b for _, b in per_pair})],
            "class_names": len(fg_names), "background_names": len(bg_names),
            "imagenet": fg_names == [c.name for c in imagenet_classes()],
            "pairs": len(per_pair), "images": sum(per_pair.values()),
            "per_pair": [min(per_pair.values()), max(per_pair.values())] if per_pair else [0, 0], "splits": splits}


def _names(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _what_the_data_is(facts: dict, manifest: dict | None) -> str:
    """The card's opening paragraph: what the rows hold, from their counts, and how they were made, from ``d3s_run.json``."""
    n_fg, n_bg, pairs = len(facts["classes"]), len(facts["backgrounds"]), facts["pairs"]
    if facts["imagenet"]:
        kind = "the 1000 ImageNet classes" if n_fg == 1000 else f"{n_fg} of the 1000 ImageNet classes"
    else:
        kind = f"{n_fg} foreground class{'es' if n_fg != 1 else ''}"
    lo, hi = facts["per_pair"]
    each = f"{lo} image{'s' if lo != 1 else ''} each" if lo == hi else f"{lo} to {hi} images each"
    grid = n_fg * n_bg
    if pairs == grid and lo == hi:
        cover = (f"all {grid} (class, background) pairs, {each}: every class is on every background equally often, "
                 "so foreground and background are independent")
    elif pairs == grid:
        cover = (f"all {grid} (class, background) pairs, {each}: every class is on every background, but not equally "
                 "often, so foreground and background are not quite independent")
    else:
        cover = (f"{pairs} of the {grid} (class, background) pairs, {each}: not every class is on every background, "
                 "so foreground and background are not independent")
    text = (f"Images of {kind} ({_names(facts['classes'])}) on {n_bg} background{'s' if n_bg != 1 else ''} "
            f"({_names(facts['backgrounds'], 10)}): {cover}. {facts['images']} distinct images in all.")
    if manifest:
        s = manifest.get("settings", {})
        guide = ("a photo of the class pasted on a background template" if s.get("photos_kind") not in (None, "none")
                 else "a background template (no photo of the class)")
        text += (f"\n\nMade by `d3s generate` (d3s {manifest.get('d3s_version', 'version not recorded')}) with the diffusion "
                 f"model `{s.get('model')}`, image-to-image from a guide ({guide}) and a prompt per (class, background), "
                 "after Algorithm 1 of *Invariant Learning via Diffusion Dreamed Distribution Shifts* (Kattakinda et al., 2022).")
    else:
        text += "\n\nHow the images were made is not recorded with this data (it has no `d3s_run.json`)."
    return text


def _load_split(counts: dict) -> str:
    """The split the load snippet names: ``benchmark`` if it has rows, else ``validation``, else the first with rows."""
    with_rows = [s for s, c in counts.items() if c["rows"]] or list(counts)
    return next((s for s in ("benchmark", "validation") if s in with_rows), with_rows[0])


def _generation_table(manifest: dict) -> str:
    s = manifest.get("settings", {})
    rows = [("model", f"`{s['model']}`" if "model" in s else None),
            ("scheduler", f"{s['scheduler']}" + (" (eta 0)" if s.get("scheduler") == "ddim" else "") if "scheduler" in s else None),
            ("steps x strength", f"{s['steps']} x {s['strength']}" if {"steps", "strength"} <= set(s) else None),
            ("guidance scale", s.get("guidance")), ("size", f"{s['size']} px" if "size" in s else None),
            ("images per pair", s.get("per_pair")), ("paired (one photo and seed per group, on every background)", s.get("paired")),
            ("foreground photos", s.get("photos_kind")), ("templates", s.get("templates")),
            ("run seed", f"{s['seed']} (each row has its own `seed`)" if "seed" in s else None),
            ("prompt template", f"`{(s.get('recipe') or {}).get('prompt')}`" if (s.get("recipe") or {}).get("prompt") else None)]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows if v is not None)


def _features_text(features) -> str:
    import datasets

    parts = []
    for name, feat in features.items():
        if isinstance(feat, datasets.ClassLabel):
            what = f"ClassLabel, {feat.num_classes} names"
            if name == "fg" and len(feat.names) == 1000:
                what += " in ImageNet index order"
        elif isinstance(feat, datasets.Image):
            what = "image"
        elif isinstance(feat, datasets.Value):
            what = feat.dtype
        elif isinstance(feat, (datasets.List, datasets.Sequence)):
            inner = getattr(feat, "feature", None)
            what = f"list of {inner.dtype}" if isinstance(inner, datasets.Value) else "list"
        else:
            what = type(feat).__name__
        parts.append(f"`{name}` ({what})")
    return "; ".join(parts)


def dataset_card(repo_id: str, root: str | Path, features, counts: dict, facts: dict, manifest: dict | None,
                 split_report: dict | None, has_examples: bool, license: str = "cc-by-4.0"):
    """The dataset card (a ``huggingface_hub.DatasetCard``) of the staged folder ``root``.

    Its YAML holds the ``configs`` and features ``datasets.load_dataset`` reads (:func:`d3s.dataset.card_metadata`);
    its text says what the rows are, counted (:func:`dataset_facts`), and loads a split that exists.

    Args:
        repo_id (`str`): ``ORG/NAME``, named by the load snippet.
        root (`str` or `Path`): the staged folder (its ``data/`` shards make the configs).
        features (`datasets.Features`): the rows' features.
        counts (`dict`): per split, ``rows`` and ``per_background`` counts.
        facts (`dict`): :func:`dataset_facts` of the rows.
        manifest (`dict`, *optional*): ``d3s_run.json`` (generation settings), when the data has one.
        split_report (`dict`, *optional*): ``split_report.json`` (how the benchmark split was checked).
        has_examples (`bool`): whether ``examples/backgrounds.png`` was written.
        license (`str`, defaults to ``"cc-by-4.0"``): the licence of the YAML header.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    title = "D3S: Diffusion Dreamed Distribution Shifts" if manifest else repo_id.split("/")[-1]
    tags = ["d3s", "distribution-shift"] + (["synthetic"] if manifest else []) + (["imagenet"] if facts["imagenet"] else [])
    meta = DatasetCardData(license=license, pretty_name=title, task_categories=["image-classification"], tags=tags,
                           size_categories=[_size_category(facts["images"])], **card_metadata(root, features))
    split = _load_split(counts)
    splits_line = ", ".join(f"`{s}` {c['rows']} rows" for s, c in counts.items())
    if split_report and "benchmark" in counts and "validation" in counts:
        splits_line += " (`benchmark` rows are also `validation` rows)"
    bg_names = list(features["bg"].names)
    header = "| background | " + " | ".join(counts) + " |\n|---|" + "---|" * len(counts)
    table = "\n".join(f"| {b} | " + " | ".join(str(c["per_background"][b]) for c in counts.values()) + " |"
                      for b in bg_names if any(c["per_background"][b] for c in counts.values()))
    totals = "| **total** | " + " | ".join(str(c["rows"]) for c in counts.values()) + " |"
    per_split = "\n".join(f"| `{s}` | {f['rows']} | {f['classes']} | {f['backgrounds']} | {f['pairs']} |"
                          for s, f in facts["splits"].items())
    if split_report:
        validation = (split_report.get("splits", {}).get("validation") or {}).get("rows")
        removed_n = sum(split_report.get("removed", {}).values())
        removed = ", ".join(f"{k}: {v}" for k, v in split_report.get("removed", {}).items()) or "none"
        share = f" ({100 * removed_n / validation:.1f}% of `validation`)" if validation and removed_n else ""
        checked = (f"The `benchmark` split is the `validation` images that pass {split_report['basis']}; removed: "
                   f"{removed}{share}; `split_report.json` has the details.")
    else:
        checked = "This data has no `split_report.json`: how (and whether) its images were checked is not recorded."
    generation = ""
    if manifest:
        recorded = [c for c in ("prompt", "seed", "photo", "template", "paste_box") if c in features]
        regen = ""
        if {"prompt", "seed"} <= set(recorded):  # two or more
            listed = ", ".join(f"`{c}`" for c in recorded[:-1]) + f" and `{recorded[-1]}`"
            regen = f"\n\nEach row also records its {listed}: `d3s regenerate` remakes an image from them."
        generation = f"\n## Generation\n\n{_generation_table(manifest)}{regen}\n"
    examples = "\n![one image per background](examples/backgrounds.png)\n" if has_examples else ""
    licence = (f"Released under the licence in the YAML header ({license}). The images were generated with "
               f"`{(manifest.get('settings') or {}).get('model')}`: their use is also subject to that model's licence."
               if manifest else f"Released under the licence in the YAML header ({license}).")
    body = f"""# {title}

{_what_the_data_is(facts, manifest)}
{examples}
## Load

```python
from datasets import load_dataset

ds = load_dataset("{repo_id}", split="{split}")
row = ds[0]
image = row["image"]                        # a PIL image
fg = ds.features["fg"].int2str(row["fg"])   # its class
bg = ds.features["bg"].int2str(row["bg"])   # its background
```

Splits: {splits_line}.

## Counts

| split | rows | classes | backgrounds | (class, background) pairs |
|---|---|---|---|---|
{per_split}

Rows per background:

{header}
{table}
{totals}
{generation}
## Quality control

{checked} For comparison, the paper's human-checked benchmark removed 10.2% of its images for a missing foreground
and about 1% as unsafe.

## Features

{_features_text(features)}.

## Licence and citation

{licence}

```bibtex
{PAPER_CITATION}
```
"""
    return DatasetCard(f"---\n{meta.to_yaml()}\n---\n\n{body}")


def _redact(text: str) -> str:
    """``text`` with anything shaped like a Hub token replaced, for messages that quote errors."""
    return _TOKEN.sub("hf_***", text)


def upload_folder(folder: str | Path, repo_id: str, repo_type: str, large: bool = False, private: bool = False,
                  token: str | None = None, ignore_patterns: list[str] | None = None) -> str:
    """Create the repository if needed and upload the staged folder; returns the repository URL.

    A ``large`` upload (a dataset) is resumable and made of many commits: ``HfApi.upload_large_folder`` where the
    installed huggingface_hub has it (it keeps its resume records in ``FOLDER/.cache/huggingface/``); otherwise
    (huggingface_hub 2.4 has none) ``HfApi.upload_folder``, which there, with ``hf_xet``, is that upload (streamed,
    committed in batches, resumed by running it again: files already on the Hub are skipped, chunks already
    uploaded are not sent again), and one commit without ``hf_xet``. Not ``large``: ``upload_folder``.

    Args:
        folder (`str` or `Path`): the staged repository folder.
        repo_id (`str`): ``ORG/NAME``.
        repo_type (`str`): ``"dataset"`` or ``"model"``.
        large (`bool`, defaults to `False`): the resumable, many-commit upload.
        private (`bool`, defaults to `False`): create the repository private.
        token (`str`, *optional*): a token; by default huggingface_hub's own (``HF_TOKEN``, ``hf auth login``).
        ignore_patterns (`list[str]`, *optional*): files of ``folder`` not to upload.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    ignore = list(ignore_patterns or []) + [STAGED_RECORD]
    if large and hasattr(api, "upload_large_folder"):
        api.upload_large_folder(repo_id=repo_id, folder_path=str(folder), repo_type=repo_type, ignore_patterns=ignore)
    else:
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, ignore_patterns=ignore,
                          commit_message="Publish with d3s")
    return str(url)


def _reuse_staged(folder: Path, inputs: dict | None) -> dict | None:
    """The report of an earlier staging of the same inputs in ``folder`` (kept with ``--stage``), or None if there is none.

    Raises :class:`PublishError` for a folder that holds the staging of other inputs.
    """
    record = folder / STAGED_RECORD
    if inputs is None or not record.is_file():
        return None
    staged = json.loads(record.read_text())
    if staged.get("inputs") != inputs:
        differ = ", ".join(sorted(k for k in set(inputs) | set(staged.get("inputs", {}))
                                  if inputs.get(k) != staged.get("inputs", {}).get(k)))
        raise PublishError(f"{folder} holds a staging of other inputs ({differ} differ); give a new --stage folder.")
    return staged["report"]


def publish(stage, dry_run: str | None, uploads, keep: str | None = None, inputs: dict | None = None,
            large: bool = False) -> int:
    """The common flow of the publish scripts: stage (no network), report, then upload unless a dry run.

    ``stage(folder) -> report`` raises :class:`PublishError` on bad input; ``uploads(folder, report)`` yields
    ``(subfolder, repo_id, repo_type)`` to push. Returns the exit code.

    Args:
        stage (`Callable`): writes the repository into a folder, returns the report.
        dry_run (`str`, *optional*): stage into this folder, keep it, upload nothing.
        uploads (`Callable`): what to push.
        keep (`str`, *optional*): stage into this folder and keep it after the upload. A folder that already holds
            the staging of the same ``inputs`` (a ``--dry-run`` or an interrupted publish) is uploaded as it is,
            without staging again: a rerun after an interrupted upload resumes it.
        inputs (`dict`, *optional*): what the staging depends on, recorded in a kept folder (``.d3s-staged.json``).
        large (`bool`, defaults to `False`): the resumable, many-commit upload (:func:`upload_folder`).
    """
    import sys

    folder, temporary = staging_dir(dry_run or keep)
    try:
        try:
            report = _reuse_staged(folder, inputs)
            if report is None and keep and folder.is_dir() and any(folder.iterdir()):
                raise PublishError(f"{folder} is not empty and holds no finished staging (an interrupted one?); remove it "
                                   "or give a new --stage folder.")
            if report is not None:
                print(f"reusing the repository folder staged in {folder} (same inputs); nothing is staged again")
            else:
                report = stage(folder)
                if inputs is not None and not temporary:
                    (folder / STAGED_RECORD).write_text(json.dumps({"inputs": inputs, "report": report}, indent=1, default=str))
        except PublishError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for line in report.get("problems", []):
            print(f"warning: {line}")
        print(report["summary"])
        if dry_run:
            print(f"dry run: nothing uploaded; the repository folder is {folder}")
            return 0
        for sub, repo_id, repo_type in uploads(folder, report):
            try:
                url = upload_folder(sub, repo_id, repo_type, large=large)
            except Exception as err:  # network, permissions, quota: one line, never a token
                first = (str(err).strip().splitlines() or [""])[0][:300]
                if not temporary:
                    again = f"run the same command again (with --stage {folder}) to resume the upload"
                elif inputs is not None:
                    again = "pass --stage DIR to keep the staged folder: a rerun with it resumes the upload without staging again"
                else:
                    again = "run the same command again"
                print(_redact(f"error: uploading {sub} to {repo_type} {repo_id} failed: {type(err).__name__}: {first}; {again}."),
                      file=sys.stderr)
                return 1
            print(f"published: {url}")
        return 0
    finally:
        cleanup(folder, temporary)


def staging_dir(folder: str | None) -> tuple[Path, bool]:
    """The folder to stage in: ``folder`` (``--dry-run`` or ``--stage``; kept) or a temporary one (removed after upload)."""
    if folder:
        return Path(folder), False
    import tempfile

    return Path(tempfile.mkdtemp(prefix="d3s-publish-")), True


def cleanup(path: Path, temporary: bool) -> None:
    if temporary:
        shutil.rmtree(path, ignore_errors=True)


# --- checkpoints ----------------------------------------------------------------------------------------

def timm_backbone(model) -> "torch.nn.Module | None":
    """The extractor as a plain timm classifier: its backbone, with the fg head as ``fc`` over all features
    (zero weights on z_bg), so it predicts exactly what the extractor's fg head predicts.

    An extractor from a frozen-features checkpoint has a neck: a linear one folds into ``fc``
    (``W_fg A_fg x + W_fg a_fg + b``); an MLP neck cannot be held by timm's linear classifier, and
    then there is no timm-format copy (None).

    A LEACE eraser on z_fg (``d3s erase``) is affine too, ``z_fg -> P z_fg + (I - P) mu``: it folds into the fg
    head first (``W_fg P``, ``b + W_fg (I - P) mu``, :meth:`~d3s.models.DisentangledExtractor.fg_head_on_z_fg`),
    so the timm copy predicts what the fg head on the erased z_fg predicts.
    """
    import torch

    from .offline_weights import create_timm_model

    affine = None if isinstance(model.neck, torch.nn.Identity) else model.neck.as_affine()
    if affine is None and not isinstance(model.neck, torch.nn.Identity):
        return None
    net = create_timm_model(model.backbone_name, pretrained=False, num_classes=len(model.fg_names), **(model.backbone_args or {}))
    state = {k: v for k, v in model.backbone.state_dict().items()}
    head = net.get_classifier()
    prefix = next(name for name, module in net.named_modules() if module is head)
    w_fg, b_fg = model.fg_head_on_z_fg()  # the z_fg eraser, if any, folded in
    if affine is None:  # z is the backbone's features: the fg head reads the first fg_dim of them
        weight = torch.zeros(len(model.fg_names), model.backbone.num_features)
        weight[:, : model.fg_dim] = w_fg
        bias = b_fg.clone()
    else:
        a, c = affine
        weight, bias = w_fg @ a[: model.fg_dim], w_fg @ c[: model.fg_dim] + b_fg
    state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weight, bias
    net.load_state_dict(state, strict=True)
    net.pretrained_cfg = {**(net.pretrained_cfg or {}), "mean": tuple(model.mean), "std": tuple(model.std),
                          "input_size": (3, model.image_size, model.image_size), "num_classes": len(model.fg_names)}
    if model.preprocessing:  # a frozen checkpoint's: resize and crop as its features were made
        net.pretrained_cfg.update({k: model.preprocessing[k] for k in ("interpolation", "crop_pct", "crop_mode")})
    return net.eval()


PROBE_NAMES = ("fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg")
SPURIOUS_SETS = {"correct": "heads on z_fg / z_bg", "all": "heads on all of z"}
METHOD_TEXT = {
    "wasserstein": "Wasserstein disentanglement, the paper's method (critics measure what z_fg tells of the background "
                   "and z_bg of the foreground; the extractor is trained to make both small)",
    "adversarial": "adversarial disentanglement (DANN / CDANN style: classifiers of the other label as adversaries)",
    "erm": "ERM, a baseline (cross-entropy of the fg head alone)",
    "groupdro": "GroupDRO, a baseline (the backgrounds as groups)",
    "irm": "IRM, a baseline (the backgrounds as environments)",
}


def _is_hub_id(text: str | None) -> bool:
    """Whether ``text`` names a Hub repository (``ORG/NAME``) rather than a local folder that exists here."""
    return bool(text) and "/" in text and not text.startswith(("/", ".")) and bool(HUB_ID.fullmatch(text)) and not Path(text).exists()


def _data_ref(source: str | None, dataset: str | None) -> tuple[str, str]:
    """``(dataset_type, dataset_name)`` of results measured on ``source``: a Hub id as it is; else ``dataset`` (the Hub
    id given for the data); else the local folder's name only (the card is public: no local path)."""
    if source and _is_hub_id(source):
        return source, source
    if dataset:
        return dataset, dataset
    if source:
        name = Path(str(source).rstrip("/")).name
        return name, f"{name} (a local folder, not on the Hub)"
    return "d3s", "D3S data (which copy is not recorded)"


def _reference_ref(source: str | None) -> tuple[str, str, str | None]:
    """``(dataset_type, dataset_name, split)`` of a benchmark's ImageNet reference (``hf:ID:split`` or a local folder)."""
    if source and source.startswith("hf:"):
        _, repo, *split = source.split(":", 2)
        return repo, repo, (split or [None])[0]
    name = Path(str(source or "imagenet").rstrip("/")).name
    return name, f"{name} (a local ImageNet folder)", None


def benchmark_results(results: str | Path, checkpoint: str | Path) -> list[dict]:
    """The `d3s benchmark` and `d3s bgchallenge` results in ``results`` (their ``--out`` folder) of exactly this
    checkpoint: ``d3s:`` models whose recorded weights digest is that of ``checkpoint``'s ``model.safetensors`` (a
    result of the weights before `d3s erase` rewrote them is not this checkpoint's, and is left out).

    Args:
        results (`str` or `Path`): a results folder (``models/*.json``; ``bgchallenge/models/*.json``).
        checkpoint (`str` or `Path`): the checkpoint folder.

    Raises :class:`PublishError` when ``results`` is not a folder or holds no result of this checkpoint.
    """
    from .bgchallenge import SUBDIR
    from .classifiers import ClassifierError, extractor_files
    from .results import MODELS_DIR

    results = Path(results)
    if not results.is_dir():
        raise PublishError(f"--results {results} is not a folder; give the --out folder of `d3s benchmark` or `d3s bgchallenge`.")
    try:
        _, digest = extractor_files(str(checkpoint))
    except ClassifierError as err:
        raise PublishError(str(err)) from None
    found = []
    for folder in (results / MODELS_DIR, results / SUBDIR / MODELS_DIR):
        for path in sorted(folder.glob("*.json")):
            try:
                result = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if result.get("kind") == "d3s" and (result.get("identity") or {}).get("weights") == digest:
                found.append(result)
    if not found:
        raise PublishError(f"--results {results} holds no result of {checkpoint} (weights {digest}); run `d3s benchmark "
                           f"--models d3s:{checkpoint} --out {results}` first, or leave --results out.")
    return found


def eval_results(probe: dict | None, spurious: dict | None, benchmark: list[dict] | None = None,
                 data: tuple[str, str] = ("d3s", "D3S data (which copy is not recorded)"), dataset: str | None = None) -> list:
    """The checkpoint's results as ``huggingface_hub.EvalResult`` s (the card's ``model-index``), top-1 accuracies:

    - ``probe.json``: each probe kind (linear, MLP) and probe (fg_from_fg, bg_from_bg, fg_from_bg, bg_from_fg) on each
      split of the data (the ImageNet rows, whose data is not recorded, stay in the card's tables);
    - ``spurious.json``: the averages and the worst group of the heads on z_fg / z_bg and on all of z (the baseline's
      numbers are another model's: table only);
    - ``benchmark``: `d3s benchmark` top-1 / top-5 on its split and on the ImageNet reference, and the Backgrounds
      Challenge's IN-9 accuracy per variation (:func:`benchmark_results`).

    Args:
        probe (`dict`, *optional*): ``probe.json``.
        spurious (`dict`, *optional*): ``spurious.json``.
        benchmark (`list[dict]`, *optional*): result records of this checkpoint.
        data (`tuple[str, str]`, defaults to an unrecorded D3S copy): ``(dataset_type, dataset_name)`` of the probes'
            and the spurious experiment's data.
        dataset (`str`, *optional*): the Hub id of the D3S data, for benchmark results on a local folder.
    """
    from huggingface_hub import EvalResult

    from .probes import by_kind

    out: list = []

    def add(value, metric: str, split: str | None, ref: tuple[str, str], config: str | None = None) -> None:
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append(EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=ref[0],
                                  dataset_name=ref[1], dataset_config=config, dataset_split=split, metric_type="accuracy",
                                  metric_name=metric, metric_value=round(float(value), 4)))

    for kind, result in by_kind(probe or {}).items():
        for split, probes in result.items():
            if split in ("chance", "imagenet"):
                continue
            for name in PROBE_NAMES:
                if name in probes:
                    add(probes[name]["top1"], f"{kind} probe {name} top-1", split, data)
    for key, label in SPURIOUS_SETS.items():
        for col in ("average", "average_4", "worst"):
            if col in (spurious or {}).get(key, {}):
                what = {"average": "average of 5 (4 D3S columns and IN-9 fg)", "average_4": "average of 4", "worst": "worst group"}[col]
                add(spurious[key][col], f"spurious correlation {what}, {label}", "validation", data)
    for r in benchmark or []:
        if "d3s" in r:
            d = r["data"]["d3s"]
            ref = _data_ref(d.get("source"), dataset)
            add(r["d3s"]["top1"], "fg head top-1 (ImageNet classes)", d.get("split"), ref)
            add(r["d3s"]["top5"], "fg head top-5 (ImageNet classes)", d.get("split"), ref)
            if r.get("imagenet"):
                kind, name, split = _reference_ref((r["data"].get("imagenet") or {}).get("source"))
                add(r["imagenet"]["top1"], "fg head top-1", split or "validation", (kind, name))
                add(r["imagenet"]["top5"], "fg head top-5", split or "validation", (kind, name))
        elif "variations" in r:
            folder = Path(str(r["data"]["bgchallenge"].get("source", "bgchallenge")).rstrip("/")).name
            ref = (folder, f"Backgrounds Challenge, IN-9 (local folder {folder})")
            for variation, v in r["variations"].items():
                add(v["top1"], f"IN-9 accuracy, {variation}", "val", ref, config=variation)
            if r.get("adversarial"):
                add(r["adversarial"]["accuracy"], "IN-9 accuracy, adversarial backgrounds", "val", ref, config="adversarial")
    return out


def _metrics_tables(probe: dict | None, spurious: dict | None, benchmark: list[dict] | None = None, dataset: str | None = None) -> str:
    """The card's result tables (what its ``model-index`` holds, with top-5, chance and the baseline)."""
    from .probes import PROBE_KINDS, by_kind

    parts = []
    for kind, result in by_kind(probe or {}).items():
        chance = result.get("chance", {})
        title = {"linear": "Linear probes", "mlp": "MLP probes (one hidden layer)"}[kind] if kind in PROBE_KINDS else kind
        chance_text = ", ".join(f"{label} {chance[label]:.3f}" for label in ("fg", "bg")
                                if isinstance(chance.get(label), (int, float)) and math.isfinite(chance[label]))
        for split, probes in result.items():
            if split == "chance":
                continue
            names = [n for n in PROBE_NAMES if n in probes]
            rows = "\n".join(f"| {name} | {probes[name]['top1']:.3f} | {probes[name]['top5']:.3f} |" for name in names)
            where = "ImageNet rows (fg labels only)" if split == "imagenet" else f"`{split}`"
            parts.append(f"### {title} on frozen features, {where} (paper, Table 2)\n\n| probe | top-1 | top-5 |\n|---|---|---|\n"
                         f"{rows}\n\n" + (f"Chance: {chance_text}. " if chance_text else "")
                         + "fg_from_bg and bg_from_fg measure leakage: the closer to chance, the better.")
    if spurious:
        cols = [c for c in ("corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "imagenet_fg", "average", "average_4", "worst")
                if c in spurious.get("correct", {})]
        rows = "\n".join(f"| {name} | " + " | ".join(f"{spurious[name][c]:.3f}" for c in cols) + " |"
                         for name in ("correct", "all", "baseline") if name in spurious)
        parts.append("### Spurious-correlation experiment, `validation` (paper, Table 3)\n\n| features | " + " | ".join(cols)
                     + " |\n|---|" + "---|" * len(cols) + "\n" + rows
                     + "\n\n`correct`: the fg head on z_fg and the bg head on z_bg; `all`: both on all of z; `baseline`: "
                       "the same heads on another model's features (not in the model index).")
    bench = [r for r in benchmark or [] if "d3s" in r]
    if bench:
        lines = ["| data | split | images | top-1 | top-5 | ImageNet top-1 | drop (top-1) | precision |", "|---|---|---|---|---|---|---|---|"]
        for r in bench:
            d, im = r["d3s"], r.get("imagenet") or {}
            name = _data_ref(r["data"]["d3s"].get("source"), dataset)[0]
            imagenet = f"{im['top1']:.3f}" if im else "not run"
            drop = f"{r['drop_top1']:.3f}" if r.get("drop_top1") is not None else "not run"
            lines.append(f"| {name} | {r['data']['d3s'].get('split')} | {d['n']} | {d['top1']:.3f} | {d['top5']:.3f} | {imagenet} "
                         f"| {drop} | {r.get('precision', 'unrecorded')} |")
        parts.append("### D3S benchmark (`d3s benchmark`; paper, section 4)\n\nThe fg head as an ImageNet classifier.\n\n"
                     + "\n".join(lines))
    challenge = [r for r in benchmark or [] if "variations" in r]
    if challenge:
        from .bgchallenge import TITLES, VARIATIONS

        cols = [v for v in VARIATIONS if any(v in r["variations"] for r in challenge)]
        lines = ["| " + " | ".join(TITLES[c] for c in cols) + " | BG-Gap | Adversarial | precision |",
                 "|" + "---|" * (len(cols) + 3)]
        for r in challenge:
            cells = [f"{100 * r['variations'][c]['top1']:.1f}" if c in r["variations"] else "not run" for c in cols]
            gap = f"{100 * r['bg_gap']:.1f}" if r.get("bg_gap") is not None else "not run"
            adv = f"{100 * r['adversarial']['accuracy']:.1f} ({r['adversarial']['n']} foregrounds)" if r.get("adversarial") else "not run"
            lines.append("| " + " | ".join(cells) + f" | {gap} | {adv} | {r.get('precision', 'unrecorded')} |")
        parts.append("### Backgrounds Challenge (`d3s bgchallenge`; paper, Table 4)\n\nIN-9 accuracy (%) per variation; BG-Gap: "
                     "Mixed-Same minus Mixed-Rand (points).\n\n" + "\n".join(lines))
    return "\n\n".join(parts)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _base_model(backbone: str | None, pretrained: bool) -> str | None:
    """The Hub id of the pretrained backbone weights the extractor started from, when there is one."""
    if not backbone or not pretrained or backbone.startswith("local-dir:"):
        return None
    if backbone.startswith("hf-hub:"):
        return backbone[len("hf-hub:"):]
    try:
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(backbone)
    except Exception:  # not a timm name
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def stage_checkpoint(checkpoint: str | Path, out: str | Path, repo_id: str, probe_json: str | Path | None = None,
                     spurious_json: str | Path | None = None, backbone: str | None = None, dataset: str | None = None,
                     results: str | Path | None = None) -> dict:
    """Write the model repository for ``repo_id`` into ``out``: the extractor (``PyTorchModelHubMixin``:
    ``model.safetensors`` + ``config.json``), a model card with its results (:func:`checkpoint_card`), and the
    backbone in timm's format under ``timm/`` (``timm.create_model("local-dir:OUT/timm", pretrained=True)``;
    published also as ``<repo-id>-timm`` for ``hf-hub:``). Fails before writing anything on bad input.

    A checkpoint trained on frozen features is published as the full image extractor: its backbone (the
    recorded one, or ``backbone``) with the trained neck and heads. With an MLP neck there is no timm
    format copy (see :func:`timm_backbone`); the card says so.

    A checkpoint with LEACE erasers (``d3s erase``) keeps them (buffers of the model); its ``erasure.json``
    (heads and probes before and after erasure) is published beside ``probe.json`` and shown on the card.

    Args:
        checkpoint (`str` or `Path`): a ``d3s train --out`` folder.
        out (`str` or `Path`): a new or empty folder for the repository.
        repo_id (`str`): ``ORG/NAME``.
        probe_json (`str` or `Path`, *optional*): probe results (default: ``CHECKPOINT/probe.json``, required).
        spurious_json (`str` or `Path`, *optional*): spurious results (default: ``CHECKPOINT/spurious.json``, if any).
        backbone (`str`, *optional*): a frozen-features checkpoint's backbone (default: the recorded one).
        dataset (`str`, *optional*): the Hub id of the D3S dataset the results were measured on (default: the training
            data of ``run.json`` when it is a Hub id; else the results name the local folder).
        results (`str` or `Path`, *optional*): a ``d3s benchmark`` / ``d3s bgchallenge`` ``--out`` folder; its results
            of this checkpoint (:func:`benchmark_results`) go on the card.
    """
    from .models import ModelError, checkpoint_config, is_frozen, load_extractor

    _check_repo_id(repo_id)
    if dataset and not _is_hub_id(dataset):
        raise PublishError(f"--dataset must be a Hub dataset id (ORG/NAME), got {dataset!r}.")
    checkpoint, out = Path(checkpoint), Path(out)
    try:
        model = load_extractor(str(checkpoint), backbone)
        config = checkpoint_config(str(checkpoint))
        frozen = is_frozen(config)
    except ModelError as err:
        raise PublishError(str(err)) from err
    probe_path = Path(probe_json) if probe_json else checkpoint / "probe.json"
    spurious_path = Path(spurious_json) if spurious_json else checkpoint / "spurious.json"
    run = (_read_json(checkpoint / "run.json") or {}).get("config", {})
    if not probe_path.is_file():
        data_arg = run.get("data") or "DATA"  # the data it was trained on, when run.json records it
        raise PublishError(f"no metrics for {checkpoint}: {probe_path} is missing; run `d3s probe --data {data_arg} --checkpoint "
                           f"{checkpoint} --out {probe_path}` (and `d3s spurious`) first, or pass --probe FILE.")
    probe = json.loads(probe_path.read_text())
    spurious = json.loads(spurious_path.read_text()) if spurious_path.is_file() else None
    erasure_path = checkpoint / "erasure.json"
    erasure = json.loads(erasure_path.read_text()) if model.erasure and erasure_path.is_file() else None
    bench = benchmark_results(results, checkpoint) if results else []
    if out.exists() and any(out.iterdir()):
        raise PublishError(f"{out} is not empty; give a new folder for the staged repository.")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    shutil.copy(probe_path, out / "probe.json")
    if spurious:
        shutil.copy(spurious_path, out / "spurious.json")
    if erasure:
        shutil.copy(erasure_path, out / "erasure.json")
    from timm.models import save_for_hf

    net = timm_backbone(model)
    if net is not None:
        save_for_hf(net, str(out / "timm"), model_config={"label_names": list(model.fg_names)}, safe_serialization=True)
    pretrained = bool(config.get("pretrained", True)) if frozen else bool(run.get("pretrained", False))
    card = checkpoint_card(repo_id, model, probe, spurious, frozen=frozen, has_timm=net is not None, erasure=erasure,
                           run=run, dataset=dataset, benchmark=bench,
                           base_model=_base_model(backbone or model.backbone_name, pretrained))
    card.save(out / "README.md")
    n_results = len(card.data.eval_results or [])
    return {"repo_id": repo_id, "folder": str(out), "timm_repo_id": f"{repo_id}-timm" if net is not None else None,
            "eval_results": n_results,
            "summary": f"staged {model.backbone_name} extractor ({len(model.fg_names)} fg / {len(model.bg_names)} bg classes) "
                       f"with {'probe and spurious' if spurious else 'probe'} results"
                       f"{f' and {len(bench)} benchmark result(s)' if bench else ''} ({n_results} in the model index) in {out}"}


def checkpoint_card(repo_id: str, model, probe: dict, spurious: dict | None, frozen: bool = False, has_timm: bool = True,
                    erasure: dict | None = None, run: dict | None = None, dataset: str | None = None,
                    benchmark: list[dict] | None = None, base_model: str | None = None):
    """The model card (a ``huggingface_hub.ModelCard``): what the extractor is and how to load it, its results as
    ``eval_results`` (the Hub renders the ``model-index``; :func:`eval_results`) and as tables.

    Args:
        repo_id (`str`): ``ORG/NAME``.
        model (`DisentangledExtractor`): the extractor published.
        probe (`dict`): ``probe.json``.
        spurious (`dict`, *optional*): ``spurious.json``.
        frozen (`bool`, defaults to `False`): trained on a backbone's frozen features.
        has_timm (`bool`, defaults to `True`): a timm-format copy is published as ``<repo_id>-timm``.
        erasure (`dict`, *optional*): ``erasure.json``.
        run (`dict`, *optional*): the ``config`` of ``run.json`` (training method and data).
        dataset (`str`, *optional*): the Hub id of the D3S dataset the results were measured on.
        benchmark (`list[dict]`, *optional*): ``d3s benchmark`` / ``d3s bgchallenge`` results of this checkpoint.
        base_model (`str`, *optional*): the Hub id of the backbone's pretrained weights.
    """
    from huggingface_hub import ModelCard, ModelCardData

    run = run or {}
    data_source = run.get("data")
    data = (dataset, dataset) if dataset else _data_ref(data_source, None)  # what the probes and the spurious experiment read
    hub_data = sorted({d for d in (dataset, data_source if _is_hub_id(data_source) else None) if d})
    results = eval_results(probe, spurious, benchmark, data, dataset)
    meta = ModelCardData(
        library_name="d3s", license="mit", pipeline_tag="image-classification",
        tags=["d3s", "disentanglement", "image-classification"] + (["timm"] if has_timm else []),
        base_model=base_model, datasets=hub_data or None, model_name=repo_id.split("/")[-1], eval_results=results or None)

    method = run.get("method")
    trained = (f"Trained with `d3s train --method {method}`: {METHOD_TEXT.get(method, method)}" if method
               else "How it was trained is not recorded with the checkpoint (no `run.json`)")
    if data_source:
        kind, name = _data_ref(data_source, None)
        trained += f", on `{kind}`" + ("." if kind == name else " (a local folder, not on the Hub).")
    else:
        trained += "."
    if frozen:
        kind = "an affine map" if model.neck.as_affine() is not None else "an MLP (affine map plus one hidden GELU layer)"
        how = (f"An extractor on the frozen features of `{model.backbone_name}` (`d3s embed`, then `d3s train` on them): the "
               f"backbone's weights are {'its pretrained ones' if base_model else 'the ones that made the features'}, unchanged; "
               f"a neck ({kind}) maps its {model.backbone.num_features} features to z, "
               f"split into z_fg ({model.fg_dim}) and z_bg ({model.bg_dim}), with a {len(model.fg_names)}-class foreground head on "
               f"z_fg and a {len(model.bg_names)}-class background head on z_bg (backgrounds: {', '.join(model.bg_names)}). "
               "Prepare images with the backbone's own preprocessing, the one the features were made with: "
               "`model.input_transform()(pil_image)` gives the uint8 input.")
    else:
        how = (f"A `{model.backbone_name}` whose {model.num_features} features are split into z_fg ({model.fg_dim}) and z_bg "
               f"({model.bg_dim}), with a {len(model.fg_names)}-class foreground head on z_fg and a {len(model.bg_names)}-class "
               f"background head on z_bg (backgrounds: {', '.join(model.bg_names)}), after *Invariant Learning via Diffusion "
               "Dreamed Distribution Shifts*.")
    if has_timm:
        timm_use = f"""
import timm                                     # the backbone with the fg head, in timm's format
net = timm.create_model("hf-hub:{repo_id}-timm", pretrained=True)"""
        timm_note = ""
    else:
        timm_use = ""
        timm_note = ("\nNo timm-format copy: the foreground head sits on a nonlinear (MLP) neck, which timm's linear classifier "
                     "cannot hold" + (" (so there is no timm copy of the LEACE eraser either)" if model.erasure else "")
                     + ". Load it with d3s as above.\n")
    index = (f"The card's model index (`model-index`) holds {len(results)} of these accuracies, on "
             + ", ".join(sorted({f"`{r.dataset_type}` ({r.dataset_split})" for r in results})) + "."
             if results else "There is no finite result to put in the card's model index.")
    body = f"""# {repo_id.split('/')[-1]}: a foreground/background disentangled `{model.backbone_name}`

{how}

{trained}

```python
from d3s.models import DisentangledExtractor
model = DisentangledExtractor.from_pretrained("{repo_id}")
z_fg, z_bg = model.features(images)            # uint8 or [0, 1] images, (N, 3, {model.image_size}, {model.image_size}){timm_use}
```
{timm_note}{_erasure_section(model, erasure, has_timm)}
## Results

{index} Beside the weights, `probe.json`{', `spurious.json`' if spurious else ''}{' and `erasure.json`' if erasure else ''} hold the full records.

{_metrics_tables(probe, spurious, benchmark, dataset)}

## Licence and citation

The d3s code and these weights: MIT.{f' The backbone started from `{base_model}`, under its own licence.' if base_model else ''}

```bibtex
{PAPER_CITATION}
```
"""
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n{body}")


def _erasure_section(model, erasure: dict | None, has_timm: bool) -> str:
    """The card's account of the checkpoint's LEACE erasers (none: empty), with heads and probes before and after."""
    if not model.erasure:
        return ""
    e = model.erasure
    parts = [f"z_fg of the background label (rank {e['z_fg']['rank']} of {model.fg_dim})" if e["z_fg"]["erases"] else None,
             f"z_bg of the foreground label (rank {e['z_bg']['rank']} of {model.bg_dim})" if e["z_bg"]["erases"] else None]
    what = " and ".join(p for p in parts if p)
    rows = f" of the `{e['split']}` split ({e['rows']} rows)" if e.get("split") else ""
    timm = (" The timm copy holds the z_fg eraser folded into its classifier: it predicts what the fg head on the erased "
            "z_fg predicts." if has_timm and e["z_fg"]["erases"] else "")
    text = (f"\n## Linear concept erasure (LEACE)\n\nThis checkpoint erases {what} with LEACE (Belrose et al., *LEACE: Perfect "
            f"linear concept erasure in closed form*, NeurIPS 2023; the `concept-erasure` package), fitted on the model's "
            f"features{rows}: on those rows no linear classifier reads the erased label from that part better than a constant, "
            "and the features change least. The erasers are buffers of the model, applied in its forward: `model.features()`, "
            f"both heads and the results below read the erased features. A nonlinear probe can still read what is left.{timm}\n")
    if not erasure or not erasure.get("eval_split"):
        return text
    split = erasure["eval_split"]
    lines = ["| measure | before | after |", "|---|---|---|"]
    for head in ("fg_head", "bg_head"):
        b, a = erasure["heads"]["before"].get(head), erasure["heads"]["after"].get(head)
        if b is not None:
            lines.append(f"| {head.replace('_', ' ')} accuracy | {b:.3f} | {a:.3f} |")
    for kind, before in (erasure.get("probes") or {}).get("before", {}).items():
        for name, r in before[split].items():
            lines.append(f"| {kind} probe {name} | {r['top1']:.3f} | {erasure['probes']['after'][kind][split][name]['top1']:.3f} |")
    return text + f"\nTop-1 on `{split}`, before and after erasure (probes fitted on the erasers' split):\n\n" + "\n".join(lines) + "\n"


__all__ = ["PublishError", "stage_dataset", "stage_checkpoint", "timm_backbone", "upload_folder", "staging_dir", "cleanup",
           "DatasetFormatError", "dataset_card", "dataset_facts", "checkpoint_card", "eval_results", "benchmark_results"]
