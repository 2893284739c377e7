"""The spurious-correlation experiment (paper, section 6, Table 3).

A pairs file maps fg classes to bg classes. ``corr`` keeps the images of exactly those pairs,
``anticorr`` the images of the same fg and bg classes in any other combination. Linear heads for
fg and bg are trained on corr (train split), where the two labels are perfectly correlated, and
tested on corr and anticorr (validation split): a head that leans on the other factor fails on
anticorr. Three feature sets:

- ``correct``: fg head on z_fg, bg head on z_bg (the intended use of a disentangled extractor);
- ``all``: both heads on all features of the same extractor (the ablation);
- ``baseline``: both heads on the features of a baseline (a ``d3s train`` checkpoint, e.g. ERM,
  or a timm model name: its penultimate features; on a features dataset, ``features``: the
  dataset's own features, i.e. the frozen backbone's penultimate features).

For D3S the default pairs are SPEC section 4's nine IN-9 pairs, the fg labels (ImageNet classes)
mapped to their IN-9 class; ImageNet classes outside IN-9 are left out. ``average`` is the mean of
the columns (not weighted by size), ``worst`` the lowest accuracy of either head on any single
(fg, bg) group of the validation images (corr and anticorr): the DomainBed/WILDS worst group.
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
          "anticorr_bg": "Anti-correlated bg", "imagenet_fg": "ImageNet fg"}


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
        import timm

        try:
            self.net = timm.create_model(name, pretrained=pretrained, num_classes=0)
        except RuntimeError as err:
            raise SpuriousError(f"--baseline {name!r} is neither a d3s checkpoint folder nor a timm model ({err}).") from None
        cfg = self.net.pretrained_cfg or {}
        self.image_size = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))

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
             imagenet: str | None = None, baseline_pretrained: bool = True, l2: float = 1e-4, backbone: str | None = None) -> dict:
    """Run the experiment; returns ``{"correct": {...}, "all": {...}, "baseline": {...}}``.

    ``backbone`` joins a frozen-features checkpoint to that backbone on image data (default: the recorded one).
    """
    from .data import is_features, label_info, load_split
    from .probes import fit_probe, load_for_data

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = load_pairs(pairs_file)
    model = load_for_data(checkpoint, data, "train", backbone).to(device)
    splits = {s: load_split(data, s) for s in ("train", "validation")}
    info = label_info(splits["train"], f"{data} (train)")
    model.check_labels(info.fg_names, info.bg_names, where=data)
    fg_map, bg_map = coarse_fg_map(pairs, info.fg_names, info.bg_names)
    frozen = is_features(splits["train"])
    base = _baseline(baseline, data, frozen, baseline_pretrained).to(device)

    # features and coarse labels of both splits: fg/bg are pair indices, -1 outside the experiment
    feats: dict[str, dict[str, torch.Tensor]] = {}
    for s, ds in splits.items():
        z, fg, bg = _features(model, ds, device)
        zb, _, _ = _features(base, ds, device)
        z_fg, z_bg = model.split(z)
        feats[s] = {"z_fg": z_fg, "z_bg": z_bg, "all": z, "baseline": zb, "fg": fg_map[fg], "bg": bg_map[bg]}
    tr, va = feats["train"], feats["validation"]
    inside_tr = (tr["fg"] >= 0) & (tr["bg"] >= 0)
    corr_tr = inside_tr & (tr["fg"] == tr["bg"])
    inside_va = (va["fg"] >= 0) & (va["bg"] >= 0)
    corr_va, anti_va = inside_va & (va["fg"] == va["bg"]), inside_va & (va["fg"] != va["bg"])
    if corr_tr.sum() < 2 or corr_va.sum() == 0 or anti_va.sum() == 0:
        raise SpuriousError(f"the pairs leave too few images: {int(corr_tr.sum())} corr train, {int(corr_va.sum())} corr validation, "
                            f"{int(anti_va.sum())} anticorr validation.")

    im = None
    if imagenet:
        ids = load_split(imagenet.split(":")[0], imagenet.split(":")[1] if ":" in imagenet else "validation", need_bg=False)
        if is_features(ids) != frozen:
            raise SpuriousError(f"--imagenet {imagenet} holds {'features' if is_features(ids) else 'images'} and --data "
                                f"{data} {'features' if frozen else 'images'}; give both of one kind.")
        im_info = label_info(ids, imagenet, need_bg=False)
        im_map, _ = coarse_fg_map(pairs, im_info.fg_names, info.bg_names)
        col = "fg" if "fg" in ids.column_names else "label"
        z_im, fg_im, _ = _features(model, ids, device, fg_column=col)
        zb_im, _, _ = _features(base, ids, device, fg_column=col)
        keep = im_map[fg_im] >= 0
        im = {"z_fg": model.split(z_im)[0][keep], "all": z_im[keep], "baseline": zb_im[keep], "fg": im_map[fg_im][keep]}

    sets = {"correct": ("z_fg", "z_bg"), "all": ("all", "all"), "baseline": ("baseline", "baseline")}
    result: dict = {}
    groups = sorted({(int(f), int(b)) for f, b in zip(va["fg"][inside_va], va["bg"][inside_va])})
    for name, (fg_feat, bg_feat) in sets.items():
        head_fg = fit_probe(tr[fg_feat][corr_tr], tr["fg"][corr_tr], l2=l2, device=device)
        head_bg = fit_probe(tr[bg_feat][corr_tr], tr["bg"][corr_tr], l2=l2, device=device)
        r = {
            "corr_fg": head_fg.accuracy(va[fg_feat][corr_va], va["fg"][corr_va]),
            "anticorr_fg": head_fg.accuracy(va[fg_feat][anti_va], va["fg"][anti_va]),
            "corr_bg": head_bg.accuracy(va[bg_feat][corr_va], va["bg"][corr_va]),
            "anticorr_bg": head_bg.accuracy(va[bg_feat][anti_va], va["bg"][anti_va]),
        }
        if im is not None:
            r["imagenet_fg"] = head_fg.accuracy(im[fg_feat], im["fg"])
        r["average"] = sum(r.values()) / len(r)
        worst = 1.0
        for f, b in groups:
            rows = (va["fg"] == f) & (va["bg"] == b)
            worst = min(worst, head_fg.accuracy(va[fg_feat][rows], va["fg"][rows]), head_bg.accuracy(va[bg_feat][rows], va["bg"][rows]))
        r["worst"] = worst
        result[name] = r
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        Path(out).with_suffix(".md").write_text(markdown_table(result, checkpoint, baseline) + "\n")
    return result


def markdown_table(result: dict, checkpoint: str = "", baseline: str = "") -> str:
    cols = [c for c in COLUMNS if c in next(iter(result.values()))] + ["average", "worst"]
    names = {"correct": f"Wass. Dis. - Correct ({checkpoint})", "all": f"Wass. Dis. - All ({checkpoint})", "baseline": f"Baseline ({baseline})"}
    head = "| Model | " + " | ".join(TITLES.get(c, c.capitalize()) for c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    rows = [f"| {names[k]} | " + " | ".join(f"{100 * v[c]:.2f}%" for c in cols) + " |" for k, v in result.items()]
    return "\n".join([head, sep, *rows])
