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

from .curate import empty_split_note
from .dataset import DATA_DIR, DatasetFormatError, find_splits, is_shard_name, local_folder, shard_name, write_card

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

    ``data`` is a local dataset folder in any parquet layout ``datasets`` reads (see :func:`d3s.dataset.find_splits`)
    or a Hub dataset id. Checks, before anything is written: it has ``fg``/``bg`` labels and the required splits.
    Corrupt image rows are reported (shard and row) and skipped, with a count.
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
    present = list(files)
    split_report = json.loads((data / "split_report.json").read_text()) if (data / "split_report.json").exists() else None
    missing = [s for s in required_splits if s not in present]
    if missing:
        note = empty_split_note(data)
        if note and "validation" in missing:  # `d3s split` ran and left validation (and so the benchmark) empty
            raise PublishError(f"{data} has no {', '.join(missing)} rows: `d3s split` left them empty ({note}) "
                               f"Rerun `d3s split` with that --validation-fraction, or pass --splits {','.join(present)}.")
        raise PublishError(f"{data} lacks the split(s) {', '.join(missing)} (has {', '.join(present)}); "
                           f"run `d3s split --data GENERATED --out {data}` first, or pass --splits.")
    schema = pq.read_schema(files[present[0]][0])
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
        for k, path in enumerate(tqdm(files[split], desc=f"checking {split}", disable=not progress)):
            # staged under the project's shard names, whatever the source layout, so the card's configs cover them
            name = path.name if is_shard_name(path.name) else shard_name(split, k, k)
            n_bad, table = _clean_shard(path, out / DATA_DIR / name, problems)
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
    if split_report:
        (out / "split_report.json").write_text(json.dumps(split_report, indent=2))  # how the benchmark split was checked
    body = dataset_card_body(repo_id, counts, feats["bg"].names, manifest, split_report, has_examples=grid is not None)
    write_card(out, feats, body, extra_yaml={
        "license": license, "pretty_name": "D3S: Diffusion Dreamed Distribution Shifts",
        "task_categories": ["image-classification"], "tags": ["distribution-shift", "synthetic", "stable-diffusion", "imagenet", "d3s"],
        "size_categories": [_size_category(sum(c["rows"] for c in counts.values()))],
    })
    staged = ", ".join(f"{s} {c['rows']}" for s, c in counts.items())
    return {"repo_id": repo_id, "folder": str(out), "splits": counts, "skipped_rows": skipped, "problems": problems,
            "summary": f"staged {staged} rows ({skipped} corrupt rows skipped) in {out}"}


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


def publish(stage, dry_run: str | None, uploads) -> int:
    """The common flow of the publish scripts: stage (no network), report, then upload unless a dry run.

    ``stage(folder) -> report`` raises :class:`PublishError` on bad input; ``uploads(folder, report)`` yields
    ``(subfolder, repo_id, repo_type)`` to push. Returns the exit code.
    """
    import sys

    folder, temporary = staging_dir(dry_run)
    try:
        try:
            report = stage(folder)
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
            print(f"published: {upload_folder(sub, repo_id, repo_type)}")
        return 0
    finally:
        cleanup(folder, temporary)


def staging_dir(dry_run: str | None) -> tuple[Path, bool]:
    """The folder to stage in: the ``--dry-run`` folder (kept) or a temporary one (removed after upload)."""
    if dry_run:
        return Path(dry_run), False
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


def _metrics_tables(probe: dict | None, spurious: dict | None) -> str:
    parts = []
    from .probes import PROBE_KINDS, by_kind

    for kind, result in by_kind(probe or {}).items():
        split = next(k for k in result if k != "chance")
        names = [n for n in ("fg_from_fg", "bg_from_bg", "fg_from_bg", "bg_from_fg") if n in result[split]]
        rows = "\n".join(f"| {name} | {result[split][name]['top1']:.3f} | {result[split][name]['top5']:.3f} |" for name in names)
        chance = result.get("chance", {})
        title = {"linear": "Linear probes", "mlp": "MLP probes (one hidden layer)"}[kind] if kind in PROBE_KINDS else kind
        parts.append(f"### {title} on frozen features ({split}; paper, Table 2)\n\n| probe | top-1 | top-5 |\n|---|---|---|\n"
                     f"{rows}\n\nChance: fg {chance.get('fg', float('nan')):.3f}, bg {chance.get('bg', float('nan')):.3f}. "
                     "fg_from_bg and bg_from_fg measure leakage: the closer to chance, the better.")
    if spurious:
        cols = [c for c in ("corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "imagenet_fg", "average", "average_4", "worst")
                if c in spurious.get("correct", {})]
        rows = "\n".join(f"| {name} | " + " | ".join(f"{spurious[name][c]:.3f}" for c in cols) + " |"
                         for name in ("correct", "all", "baseline") if name in spurious)
        parts.append("### Spurious-correlation experiment (paper, Table 3)\n\n| features | " + " | ".join(cols) + " |\n|---|"
                     + "---|" * len(cols) + "\n" + rows)
    return "\n\n".join(parts)


def stage_checkpoint(checkpoint: str | Path, out: str | Path, repo_id: str, probe_json: str | Path | None = None,
                     spurious_json: str | Path | None = None, backbone: str | None = None) -> dict:
    """Write the model repository for ``repo_id`` into ``out``: the extractor (``PyTorchModelHubMixin``:
    ``model.safetensors`` + ``config.json``), a model card with its probe and spurious results, and the
    backbone in timm's format under ``timm/`` (``timm.create_model("local-dir:OUT/timm", pretrained=True)``;
    published also as ``<repo-id>-timm`` for ``hf-hub:``). Fails before writing anything on bad input.

    A checkpoint trained on frozen features is published as the full image extractor: its backbone (the
    recorded one, or ``backbone``) with the trained neck and heads. With an MLP neck there is no timm
    format copy (see :func:`timm_backbone`); the card says so.

    A checkpoint with LEACE erasers (``d3s erase``) keeps them (buffers of the model); its ``erasure.json``
    (heads and probes before and after erasure) is published beside ``probe.json`` and shown on the card.
    """
    from .models import ModelError, checkpoint_config, is_frozen, load_extractor

    _check_repo_id(repo_id)
    checkpoint, out = Path(checkpoint), Path(out)
    try:
        model = load_extractor(str(checkpoint), backbone)
        frozen = is_frozen(checkpoint_config(str(checkpoint)))
    except ModelError as err:
        raise PublishError(str(err)) from err
    probe_path = Path(probe_json) if probe_json else checkpoint / "probe.json"
    spurious_path = Path(spurious_json) if spurious_json else checkpoint / "spurious.json"
    if not probe_path.is_file():
        raise PublishError(f"no metrics for {checkpoint}: {probe_path} is missing; run `d3s probe --data DIR --checkpoint "
                           f"{checkpoint} --out {probe_path}` (and `d3s spurious`) first, or pass --probe FILE.")
    probe = json.loads(probe_path.read_text())
    spurious = json.loads(spurious_path.read_text()) if spurious_path.is_file() else None
    erasure_path = checkpoint / "erasure.json"
    erasure = json.loads(erasure_path.read_text()) if model.erasure and erasure_path.is_file() else None
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
    (out / "README.md").write_text(checkpoint_card(repo_id, model, probe, spurious, frozen=frozen, has_timm=net is not None,
                                                   erasure=erasure))
    return {"repo_id": repo_id, "folder": str(out), "timm_repo_id": f"{repo_id}-timm" if net is not None else None,
            "summary": f"staged {model.backbone_name} extractor ({len(model.fg_names)} fg / {len(model.bg_names)} bg classes) "
                       f"with {'probe and spurious' if spurious else 'probe'} results in {out}"}


def checkpoint_card(repo_id: str, model, probe: dict, spurious: dict | None, frozen: bool = False, has_timm: bool = True,
                    erasure: dict | None = None) -> str:
    meta = {"library_name": "d3s", "license": "mit", "tags": ["d3s", "disentanglement", "image-classification"] + (["timm"] if has_timm else []),
            "pipeline_tag": "image-classification"}
    import yaml

    if frozen:
        kind = "an affine map" if model.neck.as_affine() is not None else "an MLP (affine map plus one hidden GELU layer)"
        how = (f"Trained on the frozen features of `{model.backbone_name}` (`d3s embed`, then `d3s train` on them): the backbone's "
               f"weights are its pretrained ones, unchanged; a neck ({kind}) maps its {model.backbone.num_features} features to z, "
               f"split into z_fg ({model.fg_dim}) and z_bg ({model.bg_dim}), with a {len(model.fg_names)}-class foreground head on "
               f"z_fg and a {len(model.bg_names)}-class background head on z_bg (backgrounds: {', '.join(model.bg_names)}). "
               "Prepare images with the backbone's own preprocessing, the one the features were made with: "
               "`model.input_transform()(pil_image)` gives the uint8 input.")
    else:
        how = (f"Trained with d3s (Wasserstein disentanglement, after *Invariant Learning via Diffusion Dreamed Distribution Shifts*): "
               f"the backbone's {model.num_features} features are split into z_fg ({model.fg_dim}) and z_bg ({model.bg_dim}), with a "
               f"{len(model.fg_names)}-class foreground head on z_fg and a {len(model.bg_names)}-class background head on z_bg "
               f"(backgrounds: {', '.join(model.bg_names)}).")
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

    return f"""---
{yaml.safe_dump(meta, sort_keys=False).strip()}
---

# {repo_id.split('/')[-1]}: a foreground/background disentangled `{model.backbone_name}`

{how}

```python
from d3s.models import DisentangledExtractor
model = DisentangledExtractor.from_pretrained("{repo_id}")
z_fg, z_bg = model.features(images)            # uint8 or [0, 1] images, (N, 3, {model.image_size}, {model.image_size}){timm_use}
```
{timm_note}{_erasure_section(model, erasure, has_timm)}
## Results

{_metrics_tables(probe, spurious)}
"""


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


__all__ = ["PublishError", "stage_dataset", "stage_checkpoint", "timm_backbone", "upload_folder", "staging_dir", "cleanup", "DatasetFormatError"]
