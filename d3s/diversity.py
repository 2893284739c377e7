"""Perceptual diversity (paper appendix D, figure 8): mean LPIPS distance over same-class image pairs.

Three sets of pairs, each pair two different images of the same ImageNet class:

- ``D3S-D3S``: both from the D3S split (never an image with itself);
- ``reference-reference``: both from the reference (ImageNet val; never an image with itself);
- ``reference-D3S``: one from each.

The paper reports 0.716, 0.706 and 0.730 over 7,500 pairs each. Pairs are drawn uniformly among
all same-class pairs of a set (so a class counts in proportion to how many pairs it has), without
repeating a pair; when a set has fewer distinct pairs than asked, all of them are used.

LPIPS (Zhang et al. 2018, the ``lpips`` package): the real run loads the torchvision backbone
weights (downloaded once, read with ``weights_only=True``) and the linear heads that ship inside
the package; ``pretrained=False`` keeps a random backbone (offline tests; distances then mean
nothing).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HIST_FILE = "diversity_hist.png"
RESULT_FILE = "diversity.json"
HIST_TITLE = "LPIPS distance between images of the same class"
SET_COLOURS = {"D3S-D3S": "#1f77b4", "reference-reference": "#ff7f0e", "reference-D3S": "#2ca02c"}
PAPER_MEANS = {"D3S-D3S": 0.716, "reference-reference": 0.706, "reference-D3S": 0.730}
_TV_BACKBONES = {"alex": "alexnet", "vgg": "vgg16", "squeeze": "squeezenet1_1"}


class DiversityError(ValueError):
    """Bad input to ``d3s diversity`` (no same-class pairs, a bad pair count, an unusable folder)."""


@dataclass
class DiversityConfig:
    """Settings of a diversity measurement.

    Args:
        data (`str`): D3S dataset folder or Hub id.
        split (`str`, *optional*): D3S split (default ``validation`` or the only one).
        reference (`str`, *optional*): ImageNet-style folder or Hub id; adds the two reference sets.
        pairs (`int`, defaults to 7500): pairs per set, as the paper.
        out (`str`, defaults to ``"d3s-diversity"``): folder for ``diversity.json`` and the histogram.
        size (`int`, defaults to 256): images are resized (short side, bicubic) and centre-cropped to this.
        pretrained (`bool`, defaults to `True`): LPIPS backbone weights; `False` = random (tests).
        net (`str`, defaults to ``"alex"``): LPIPS backbone, ``alex`` (the LPIPS default), ``vgg``, ``squeeze``.
        seed (`int`, defaults to 0): pair sampling seed.
    """

    data: str
    split: str | None = None
    reference: str | None = None
    pairs: int = 7500
    out: str = "d3s-diversity"
    size: int = 256
    pretrained: bool = True
    net: str = "alex"
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"


def same_class_pairs(labels_a: np.ndarray, labels_b: np.ndarray | None, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` distinct same-class pairs ``(i, j)``, ``i`` indexing ``labels_a`` and ``j`` ``labels_b``.

    With ``labels_b`` None, both index ``labels_a`` and ``i != j`` (no image with itself); a pair and
    its mirror count as one. Pairs are uniform among all same-class pairs.
    """
    within = labels_b is None
    labels_b = labels_a if within else labels_b
    groups_a = {c: np.flatnonzero(labels_a == c) for c in np.unique(labels_a)}
    groups_b = {c: np.flatnonzero(labels_b == c) for c in np.unique(labels_b)}
    classes = [c for c in groups_a if c in groups_b]
    if within:
        counts = np.array([len(groups_a[c]) * (len(groups_a[c]) - 1) // 2 for c in classes], dtype=np.float64)
    else:
        counts = np.array([len(groups_a[c]) * len(groups_b[c]) for c in classes], dtype=np.float64)
    total = int(counts.sum())
    if total == 0:
        return np.empty((0, 2), dtype=np.int64)
    if total <= n:  # few enough: take every pair
        out = []
        for c in classes:
            a, b = groups_a[c], groups_b[c]
            if within:
                out.extend((a[i], a[j]) for i in range(len(a)) for j in range(i + 1, len(a)))
            else:
                out.extend((x, y) for x in a for y in b)
        return np.asarray(out, dtype=np.int64)
    seen: set[tuple[int, int]] = set()
    p = counts / counts.sum()
    while len(seen) < n:
        for k in rng.choice(len(classes), size=n - len(seen), p=p):
            a, b = groups_a[classes[k]], groups_b[classes[k]]
            if within:
                i, j = rng.choice(len(a), size=2, replace=False)
                pair = (int(min(a[i], a[j])), int(max(a[i], a[j])))
            else:
                pair = (int(a[rng.integers(len(a))]), int(b[rng.integers(len(b))]))
            seen.add(pair)
    return np.asarray(sorted(seen), dtype=np.int64)[:n]


def lpips_model(net: str = "alex", pretrained: bool = True, device="cpu"):
    """An LPIPS metric; only safe loaders are used (``weights_only=True``), nothing is unpickled freely."""
    import os

    import lpips
    import torch
    import torchvision

    import warnings

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)  # structure only, no download
    lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth")
    model.load_state_dict(torch.load(lin, map_location="cpu", weights_only=True), strict=False)
    if pretrained:
        builder = getattr(torchvision.models, _TV_BACKBONES[net])
        weights = torchvision.models.get_model_weights(builder).IMAGENET1K_V1
        backbone = builder()
        backbone.load_state_dict(weights.get_state_dict(progress=True, weights_only=True))
        for k in range(1, model.net.N_slices + 1):
            for name, layer in getattr(model.net, f"slice{k}").named_children():
                layer.load_state_dict(backbone.features[int(name)].state_dict())
    return model.to(device).eval()


def lpips_distances(model, images_a: np.ndarray, images_b: np.ndarray, pairs: np.ndarray, batch_size: int = 32,
                    device="cpu") -> np.ndarray:
    """LPIPS of each pair; images are uint8 ``(N, 3, H, W)`` arrays, scaled to [-1, 1] as LPIPS expects."""
    import torch

    out = np.empty(len(pairs), dtype=np.float64)

    def tensor(arr, idx):
        return torch.from_numpy(np.ascontiguousarray(arr[idx])).to(device).float().div_(127.5).sub_(1.0)

    with torch.inference_mode():
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            d = model(tensor(images_a, chunk[:, 0]), tensor(images_b, chunk[:, 1]))
            out[s : s + len(chunk)] = d.flatten().float().cpu().numpy()
    return out


def _subset(images, indices: np.ndarray):
    """The images at ``indices`` (sorted, unique), as a smaller ImageSet, and the map old index -> new."""
    from .imagesets import ImageSet

    idx = np.unique(indices)
    read = images.read

    def sub_read(a: int, b: int) -> list:
        return [read(int(i), int(i) + 1)[0] for i in idx[a:b]]

    return ImageSet(images.name, images.source, images.fg[idx], sub_read), {int(o): n for n, o in enumerate(idx)}


def _decode_needed(images, pair_cols: list[np.ndarray], size: int) -> tuple[np.ndarray, list[np.ndarray]]:
    from .imagesets import decode

    needed = np.concatenate(pair_cols) if pair_cols else np.empty(0, dtype=np.int64)
    sub, remap = _subset(images, needed)
    config = {"input_size": (3, size, size), "interpolation": "bicubic", "crop_pct": 1.0, "crop_mode": "center"}
    arr = decode(sub, config, workers=2)
    return arr, [np.asarray([remap[int(i)] for i in col], dtype=np.int64) for col in pair_cols]


def histogram(distances: dict[str, np.ndarray], path: str | Path) -> dict:
    """Overlaid histograms of the sets (paper figure 8), means in the legend; title stored in the PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = np.concatenate([d for d in distances.values() if len(d)])
    bins = np.linspace(min(0.0, values.min()), max(1.0, values.max()), 41)
    for name, d in distances.items():
        ax.hist(d, bins=bins, alpha=0.5, color=SET_COLOURS.get(name), label=f"{name} (mean {d.mean():.3f}, {len(d)} pairs)")
    ax.set_xlabel("LPIPS distance")
    ax.set_ylabel("pairs")
    ax.set_title(HIST_TITLE)
    ax.legend(fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Title": HIST_TITLE, "Software": "d3s"}, bbox_inches="tight")
    return {"path": str(path), "title": HIST_TITLE}


def run_diversity(c: DiversityConfig) -> dict:
    """Measure the sets, write ``diversity.json`` and the histogram into ``c.out``; returns the result."""
    from .benchmark import BenchmarkError, open_d3s, open_reference, resolve_device

    # 1. inputs
    if c.pairs < 1:
        raise DiversityError(f"--pairs must be at least 1, got {c.pairs}.")
    if c.size < 32:
        raise DiversityError(f"--size must be at least 32 pixels (LPIPS's backbone downsamples 16x), got {c.size}.")
    if c.net not in _TV_BACKBONES:
        raise DiversityError(f"Unknown LPIPS net {c.net!r}; valid: {', '.join(_TV_BACKBONES)}.")
    try:
        d3s = open_d3s(c.data, c.split)
        ref = open_reference(c.reference) if c.reference else None
    except BenchmarkError as err:
        raise DiversityError(str(err)) from err

    # 2. pairs, from the seed
    rng = np.random.default_rng(c.seed)
    plans = {"D3S-D3S": ("d3s", "d3s", same_class_pairs(d3s.fg, None, c.pairs, rng))}
    if ref is not None:
        plans["reference-reference"] = ("ref", "ref", same_class_pairs(ref.fg, None, c.pairs, rng))
        plans["reference-D3S"] = ("ref", "d3s", same_class_pairs(ref.fg, d3s.fg, c.pairs, rng))
    for name, (_, _, pairs) in plans.items():
        if len(pairs) == 0:
            why = ("no class has two images" if name != "reference-D3S"
                   else "no class is in both the reference and D3S")
            raise DiversityError(f"No same-class pairs for {name}: {why} (D3S classes: {len(np.unique(d3s.fg))}).")

    # 3. decode only the images in some pair, once per set
    sets = {"d3s": d3s, "ref": ref}
    arrays: dict[str, np.ndarray] = {}
    for key in ("d3s", "ref"):
        cols = [p[:, i] for a, b, p in plans.values() for i, side in ((0, a), (1, b)) if side == key]
        if cols:
            arrays[key], remapped = _decode_needed(sets[key], cols, c.size)
            it = iter(remapped)
            for name, (a, b, p) in plans.items():
                for i, side in ((0, a), (1, b)):
                    if side == key:
                        p[:, i] = next(it)

    # 4. LPIPS
    device = resolve_device(c.device)
    model = lpips_model(c.net, c.pretrained, device)
    t0 = time.perf_counter()
    distances = {name: lpips_distances(model, arrays[a], arrays[b], p, c.batch_size, device) for name, (a, b, p) in plans.items()}
    result = {
        "config": asdict(c),
        "seconds": round(time.perf_counter() - t0, 3),
        "sets": {name: {"mean": float(d.mean()), "std": float(d.std()), "pairs": int(len(d)),
                        "paper_mean": PAPER_MEANS[name]} for name, d in distances.items()},
        "note": None if c.pretrained else "random LPIPS networks (--no-pretrained): the distances are not meaningful",
    }
    out = Path(c.out)
    result["histogram"] = histogram(distances, out / HIST_FILE)["path"]
    (out / RESULT_FILE).write_text(json.dumps({**result, "distances": {k: v.tolist() for k, v in distances.items()}}, indent=1))
    return result
