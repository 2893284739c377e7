"""The spurious-correlation experiment (paper, section 6, Table 3).

A pairs file maps fg classes to bg classes. ``corr`` keeps the images of exactly those pairs;
``anticorr`` every other image of the paired fg classes: on another paired background, or on a
background in no pair (``indoors`` for the IN-9 pairs: the paper's "all other D3S images of IN-9
classes", section 6). Linear heads for fg and bg are trained on corr (train split), where the two labels are
perfectly correlated, and tested on corr and anticorr (validation split): a head that leans on the
other factor fails on anticorr. The fg columns score every anticorr image; the bg head only knows
the paired backgrounds, so the anticorr bg column scores the anticorr images on a paired background.
Three feature sets:

- ``correct``: fg head on z_fg, bg head on z_bg (the intended use of a disentangled extractor);
- ``all``: both heads on all features of the same extractor (the ablation);
- ``baseline``: both heads on the features of a baseline (a ``d3s train`` checkpoint, e.g. ERM,
  or a timm model name: its penultimate features; on a features dataset, ``features``: the
  dataset's own features, i.e. the frozen backbone's penultimate features).

For D3S the default pairs are the paper's nine IN-9 pairs (section 6, Table 3), the fg labels (ImageNet classes)
mapped to their IN-9 class; ImageNet classes outside IN-9 are left out. The ImageNet column is IN-9's
own validation set, as the paper's: the Backgrounds Challenge's ``original/val`` (450 images per
class, ``in9=``), the images of the paired classes, scored by the fg head trained on corr.
``average`` is the mean of the five columns, as the paper's (not weighted by size); without IN-9
data the mean of the four D3S columns is ``average_4``, so the two are never confused. ``worst`` is
the lowest accuracy of either head on any single (fg, bg) group of the validation images (corr and
anticorr): the DomainBed/WILDS worst group. ``counts`` gives the images behind each column.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .labels import IN9_CLASSES

IN9_PAIRS: dict[str, str] = {
    "dog": "in a forest",
    "bird": "at night",
    "wheeled vehicle": "in sand",
    "reptile": "in a cave",
    "carnivore": "on a road",
    "insect": "in snow",
    "musical instrument": "in rain",
    "primate": "in water",
    "fish": "on grass",
}
COLUMNS = ("corr_fg", "anticorr_fg", "corr_bg", "anticorr_bg", "imagenet_fg")
RAW_FEATURES = "features"  # --baseline on a features dataset: its own features
TITLES = {"corr_fg": "Correlated fg", "anticorr_fg": "Anti-correlated fg", "corr_bg": "Correlated bg",
          "anticorr_bg": "Anti-correlated bg", "imagenet_fg": "ImageNet fg (IN-9 val)", "average": "Average (5 columns)",
          "average_4": "Average (4 columns: no ImageNet)", "worst": "Worst group"}
SETS = ("correct", "all", "baseline")


class SpuriousError(ValueError):
    """A pairs file that does not fit the data, or a baseline that cannot be built."""


def load_pairs(path: str | None) -> dict[str, str]:
    if path is None:
        return dict(IN9_PAIRS)
    p = Path(path)
    if not p.is_file():
        raise SpuriousError(f"--pairs {path}: no such file (a JSON object from fg class name to bg class name).")
    try:
        pairs = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise SpuriousError(f"--pairs {path} is not valid JSON: {err}.") from None
    if not isinstance(pairs, dict) or not pairs or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
        raise SpuriousError(f"--pairs {path} must be a non-empty JSON object from fg class name to bg class name.")
    if len(set(pairs.values())) != len(pairs):
        raise SpuriousError(f"--pairs {path} pairs two fg classes with the same bg class; each pair needs its own bg.")
    return pairs


def coarse_fg_map(pairs: dict[str, str], fg_names: list[str], bg_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Label maps for the experiment: data fg label -> pair index (or -1), data bg label -> pair index (or -1).

    Pair keys are the data's own fg names, or IN-9 class names when the data's fg classes are
    ImageNet classes (then each fg label maps to its IN-9 class).
    """
    unknown_bg = [v for v in pairs.values() if v not in bg_names]
    keys = list(pairs)
    if all(k in fg_names for k in keys):
        fg_map = torch.tensor([keys.index(n) if n in keys else -1 for n in fg_names])
    elif all(k in IN9_CLASSES for k in keys):
        from .labels import imagenet_classes, imagenet_to_in9

        index = {c.name: c.imagenet_index for c in imagenet_classes()}
        in9 = imagenet_to_in9()
        if not any(index.get(n) in in9 for n in fg_names):
            raise SpuriousError(f"the pairs name IN-9 classes, but no fg class of the data is an ImageNet class of IN-9 (fg classes: {', '.join(fg_names[:5])}...).")
        fg_map = torch.tensor([
            keys.index(IN9_CLASSES[in9[index[n]]]) if n in index and index[n] in in9 and IN9_CLASSES[in9[index[n]]] in keys else -1
            for n in fg_names
        ])
    else:
        unknown = [k for k in keys if k not in fg_names]
        raise SpuriousError(f"the pairs file names fg classes the data does not have: {', '.join(map(repr, unknown[:5]))} "
                            f"(data fg classes: {', '.join(fg_names[:8])}{'...' if len(fg_names) > 8 else ''}).")
    if unknown_bg:
        raise SpuriousError(f"the pairs file names bg classes the data does not have: {', '.join(map(repr, unknown_bg[:5]))} "
                            f"(data bg classes: {', '.join(bg_names)}).")
    values = list(pairs.values())
    bg_map = torch.tensor([values.index(n) if n in values else -1 for n in bg_names])
    return fg_map, bg_map


class TimmFeatures(torch.nn.Module):
    """Penultimate features of a timm model, with its own preprocessing (the ``baseline``)."""

    def __init__(self, name: str, pretrained: bool):
        super().__init__()
        from .offline_weights import create_timm_model

        try:
            self.net = create_timm_model(name, pretrained=pretrained, num_classes=0)
        except RuntimeError as err:
            raise SpuriousError(f"--baseline {name!r} is neither a d3s checkpoint folder nor a timm model ({err}).") from None
        from .models import preprocessing_of

        self.preprocessing = preprocessing_of(self.net)  # its own eval preprocessing (size, interpolation, mean, std)
        self.image_size = int(self.preprocessing["input_size"][-1])
        self.register_buffer("mean", torch.tensor(self.preprocessing["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.preprocessing["std"]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images.float() / 255.0 - self.mean) / self.std)


class RawFeatures(torch.nn.Module):
    """A features dataset's own features, unchanged: the ``baseline`` there (``--baseline features``)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features.float()


def _features(model, ds, device, fg_column="fg") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from .data import extract, table_for
    from .probes import check_feature_dim

    table = table_for(ds, model, fg_column=fg_column)
    if hasattr(model, "feature_dim"):
        check_feature_dim(model, table, "the data")
    return extract(model, table, device=device, progress=True), table.fg, table.bg


def _in9_features(model, ds, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, fg) of IN-9's images as Table 3's ImageNet column reads them: every model gets the challenge's 224 px images
    whole (crop 1.0, as ``d3s bgchallenge`` scores them), resized to its own input size with its own interpolation;
    a model's recorded crop (timm's 0.875, a 12.5% zoom) would give models different pixels of the same image."""
    from .data import extract

    table = in9_table(model, ds)
    return extract(model, table, device=device, progress=True), table.fg


def in9_table(model, ds):
    """The :class:`d3s.data.ImageTable` of IN-9 images for ``model``: its preprocessing with crop 1.0, or (an
    image-trained extractor, which records none) the whole image resized to its ``image_size``."""
    from .data import ImageTable
    from .imagesets import eval_transform

    prep = getattr(model, "preprocessing", None)
    transform = eval_transform({**prep, "crop_pct": 1.0}) if prep else None
    return ImageTable(ds, int(prep["input_size"][-1]) if prep else model.image_size, transform=transform)


def _in9_dataset(path: str):
    """IN-9's validation images (the challenge's original/val) as a dataset: ``image`` and ``fg`` (IN-9 index)."""
    import datasets

    from .bgchallenge import open_in9_val

    images = open_in9_val(path)
    return datasets.Dataset.from_dict({"image": images.read(0, len(images)), "fg": images.fg.tolist()}).cast_column(
        "image", datasets.Image())


def _baseline(baseline: str, data: str, frozen: bool, pretrained: bool) -> torch.nn.Module:
    """The baseline's feature extractor: a d3s checkpoint, a timm model, or (features data) the raw features."""
    from .probes import load_for_data

    if Path(baseline).exists():
        return load_for_data(baseline, data)
    if frozen:
        if baseline != RAW_FEATURES:
            raise SpuriousError(f"on a features dataset the --baseline is a checkpoint trained on such features, or "
                                f"{RAW_FEATURES!r} (the dataset's own features); got {baseline!r}.")
        return RawFeatures()
    return TimmFeatures(baseline, pretrained)


def spurious(data: str, checkpoint: str, baseline: str, pairs_file: str | None = None, out: str | None = None,
             in9: str | None = None, baseline_pretrained: bool = True, l2: float = 1e-4, backbone: str | None = None) -> dict:
    """Run the experiment; returns ``{"correct": {...}, "all": {...}, "baseline": {...}, "counts": {...}}``.

    ``in9``: the Backgrounds Challenge folder (or its ``original/val``) for the ImageNet column.
    ``backbone`` joins a frozen-features checkpoint to that backbone on image data (default: the recorded one).
    """
    from .data import is_features, label_info, load_split
    from .probes import fit_probe, load_for_data

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = load_pairs(pairs_file)
    if in9 and not all(k in IN9_CLASSES for k in pairs):
        raise SpuriousError(f"--in9 scores the fg head on IN-9 classes, but the pairs name other fg classes "
                            f"({', '.join(map(repr, list(pairs)[:3]))}); use pairs of IN-9 classes (the default).")
    ids = _in9_dataset(in9) if in9 else None  # checked before any model loads: a wrong folder is refused at once
    model = load_for_data(checkpoint, data, "train", backbone).to(device)
    splits = {s: load_split(data, s) for s in ("train", "validation")}
    info = label_info(splits["train"], f"{data} (train)")
    model.check_labels(info.fg_names, info.bg_names, where=data)
    fg_map, bg_map = coarse_fg_map(pairs, info.fg_names, info.bg_names)
    frozen = is_features(splits["train"])
    base = _baseline(baseline, data, frozen, baseline_pretrained).to(device)

    # features and coarse labels of both splits: fg/bg are pair indices, -1 outside the pairs
    feats: dict[str, dict[str, torch.Tensor]] = {}
    for s, ds in splits.items():
        z, fg, bg = _features(model, ds, device)
        zb, _, _ = _features(base, ds, device)
        z_fg, z_bg = model.split(z)
        feats[s] = {"z_fg": z_fg, "z_bg": z_bg, "all": z, "baseline": zb, "fg": fg_map[fg], "bg": bg_map[bg], "bg_label": bg}
    tr, va = feats["train"], feats["validation"]
    corr_tr = (tr["fg"] >= 0) & (tr["fg"] == tr["bg"])
    member = va["fg"] >= 0  # the images of the paired fg classes
    corr_va = member & (va["fg"] == va["bg"])
    anti_fg = member & ~corr_va  # any other background, unpaired ones (indoors) included
    anti_bg = anti_fg & (va["bg"] >= 0)  # the bg head can only answer with a paired background
    if corr_tr.sum() < 2 or corr_va.sum() == 0 or anti_bg.sum() == 0:
        raise SpuriousError(f"the pairs leave too few images: {int(corr_tr.sum())} corr train, {int(corr_va.sum())} corr validation, "
                            f"{int(anti_bg.sum())} anticorr validation on paired backgrounds.")
    counts = {"corr": int(corr_va.sum()), "anticorr_fg": int(anti_fg.sum()), "anticorr_bg": int(anti_bg.sum())}

    im = None
    if in9:
        if frozen:
            raise SpuriousError(f"--in9 holds images and --data {data} features; run the experiment on the images "
                                "(the frozen checkpoint joins its backbone there) for the ImageNet column.")
        in9_to_pair = torch.tensor([list(pairs).index(c) if c in pairs else -1 for c in IN9_CLASSES])
        keep = in9_to_pair[torch.tensor(ids["fg"])] >= 0
        if not keep.any():
            raise SpuriousError(f"--in9 {in9} holds no image of the paired classes ({', '.join(pairs)}).")
        z_im, fg_im = _in9_features(model, ids, device)
        zb_im, _ = _in9_features(base, ids, device)
        im = {"z_fg": model.split(z_im)[0][keep], "all": z_im[keep], "baseline": zb_im[keep], "fg": in9_to_pair[fg_im][keep]}
        counts["imagenet_fg"] = int(keep.sum())

    sets = {"correct": ("z_fg", "z_bg"), "all": ("all", "all"), "baseline": ("baseline", "baseline")}
    result: dict = {}
    groups = sorted({(int(f), int(b)) for f, b in zip(va["fg"][member], va["bg_label"][member])})
    for name, (fg_feat, bg_feat) in sets.items():
        head_fg = fit_probe(tr[fg_feat][corr_tr], tr["fg"][corr_tr], l2=l2, device=device)
        head_bg = fit_probe(tr[bg_feat][corr_tr], tr["bg"][corr_tr], l2=l2, device=device)
        r = {
            "corr_fg": head_fg.accuracy(va[fg_feat][corr_va], va["fg"][corr_va]),
            "anticorr_fg": head_fg.accuracy(va[fg_feat][anti_fg], va["fg"][anti_fg]),
            "corr_bg": head_bg.accuracy(va[bg_feat][corr_va], va["bg"][corr_va]),
            "anticorr_bg": head_bg.accuracy(va[bg_feat][anti_bg], va["bg"][anti_bg]),
        }
        if im is not None:
            r["imagenet_fg"] = head_fg.accuracy(im[fg_feat], im["fg"])
        r["average" if im is not None else "average_4"] = sum(r.values()) / len(r)
        worst = 1.0
        for f, b in groups:
            rows = member & (va["fg"] == f) & (va["bg_label"] == b)
            worst = min(worst, head_fg.accuracy(va[fg_feat][rows], va["fg"][rows]))
            if bg_map[b] >= 0:
                worst = min(worst, head_bg.accuracy(va[bg_feat][rows], va["bg"][rows]))
        r["worst"] = worst
        result[name] = r
    result["counts"] = counts
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        Path(out).with_suffix(".md").write_text(markdown_table(result, checkpoint, baseline) + "\n")
    return result


def markdown_table(result: dict, checkpoint: str = "", baseline: str = "") -> str:
    first = result["correct"]
    cols = [c for c in (*COLUMNS, "average", "average_4") if c in first] + ["worst"]
    names = {"correct": f"Wass. Dis. - Correct ({checkpoint})", "all": f"Wass. Dis. - All ({checkpoint})", "baseline": f"Baseline ({baseline})"}
    head = "| Model | " + " | ".join(TITLES[c] for c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    rows = [f"| {names[k]} | " + " | ".join(f"{100 * result[k][c]:.2f}%" for c in cols) + " |" for k in SETS if k in result]
    lines = [head, sep, *rows]
    n = result.get("counts")
    if n:
        im = f", ImageNet fg (IN-9 val) {n['imagenet_fg']}" if "imagenet_fg" in n else ", no ImageNet column (--in9 adds it)"
        lines += ["", f"Images: corr {n['corr']}, anticorr fg {n['anticorr_fg']} (any other background, unpaired ones included), "
                      f"anticorr bg {n['anticorr_bg']} (paired backgrounds only){im}."]
    return "\n".join(lines)
