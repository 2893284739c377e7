"""Publishing to the Hugging Face Hub: stage the exact repository folder, check it, then upload it.

Every publish is two steps. ``stage_*`` writes the repository folder locally with no network (what
``--dry-run DIR`` keeps); :func:`upload_folder` pushes it. Bad input fails in the staging step, before any
upload. The cards are ``huggingface_hub``'s own ``ModelCard`` / ``DatasetCard``: a checkpoint's results are
its ``model-index`` (``eval_results``, which the Hub renders), and a dataset card says what the staged folder
holds, counted from its rows (checkpoints: :mod:`d3s.hub_checkpoint`). Tokens come from ``HF_TOKEN`` or ``hf auth login`` through huggingface_hub
itself and are never printed.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .curate import empty_split_note
from .dataset import (DATA_DIR, DatasetFormatError, card_metadata, find_splits, is_shard_name, local_folder,
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


def check_repo_id(repo_id: str) -> None:
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

    check_repo_id(repo_id)
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


__all__ = ["PublishError", "stage_dataset", "upload_folder", "staging_dir", "cleanup", "DatasetFormatError", "dataset_card",
           "dataset_facts", "check_repo_id"]
