"""Linear probes on frozen features (paper, Table 2): how much of each label each feature part holds.

A probe that under-fits hides leakage, so each probe is a multinomial logistic regression on
standardised features (mean and std of the probe's train split), fitted to convergence with
full-batch L-BFGS and a small L2 penalty (which makes the optimum unique and finite even on
separable data). Its train accuracy is reported beside the held-out one.

::

    d3s probe --data out/toy --checkpoint out/run --out probe.json
    d3s features --data out/toy --checkpoint out/run --split validation --out val.npz
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROBES = {  # name: (features, label)
    "fg_from_fg": ("z_fg", "fg"),
    "bg_from_bg": ("z_bg", "bg"),
    "fg_from_bg": ("z_bg", "fg"),
    "bg_from_fg": ("z_fg", "bg"),
}


@dataclass
class LinearProbe:
    """A fitted probe: standardisation + linear map."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    classes: torch.Tensor  # label value of each output

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
        if len(y) == 0:
            return float("nan")
        k = min(k, len(self.classes))
        top = self.logits(x).topk(k, dim=1).indices
        return (self.classes[top] == y[:, None]).any(1).float().mean().item()


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, max_iter: int = 500, device: str | torch.device = "cpu") -> LinearProbe:
    """Multinomial logistic regression on standardised ``x``, fitted to convergence (L-BFGS).

    Args:
        x (`torch.Tensor`): (N, D) features.
        y (`torch.Tensor`): (N,) integer labels; only the values present are classes of the probe.
        l2 (`float`, defaults to 1e-4): weight penalty ``l2 / 2 * |W|^2``; small, so the probe reads
            anything linearly readable, yet large enough for the optimum to be finite.
        max_iter (`int`, defaults to 500): L-BFGS iterations (it stops earlier at convergence).
    """
    x = x.to(device, torch.float32)
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    xs = (x - mean) / std
    classes, target = torch.unique(y.to(device), return_inverse=True)
    w = torch.zeros(len(classes), x.shape[1], device=device, requires_grad=True)
    b = torch.zeros(len(classes), device=device, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w.T + b, target) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    if len(classes) > 1:
        opt.step(closure)
    return LinearProbe(mean.cpu(), std.cpu(), w.detach().cpu(), b.detach().cpu(), classes.cpu())


def chance(train_labels: torch.Tensor, eval_labels: torch.Tensor) -> float:
    """Accuracy of always answering the train split's most frequent class (1/K when balanced)."""
    if len(eval_labels) == 0:
        return float("nan")
    majority = torch.bincount(train_labels).argmax()
    return (eval_labels == majority).float().mean().item()


def run_probes(train: dict[str, torch.Tensor], evals: dict[str, dict[str, torch.Tensor]], l2: float = 1e-4,
               device: str | torch.device = "cpu") -> dict:
    """The four probes, fitted on ``train`` (z_fg, z_bg, fg, bg) and scored on each eval split.

    Returns ``{split: {probe: {"top1", "top5", "train_top1"}}, "chance": {"fg", "bg"}}``.
    """
    fitted = {name: fit_probe(train[feat], train[lab], l2=l2, device=device) for name, (feat, lab) in PROBES.items()}
    result: dict = {}
    first = next(iter(evals.values()))
    for split, data in evals.items():
        result[split] = {}
        for name, (feat, lab) in PROBES.items():
            p = fitted[name]
            result[split][name] = {
                "top1": p.accuracy(data[feat], data[lab], 1),
                "top5": p.accuracy(data[feat], data[lab], 5),
                "train_top1": p.accuracy(train[feat], train[lab], 1),
            }
    result["chance"] = {"fg": chance(train["fg"], first["fg"]), "bg": chance(train["bg"], first["bg"])}
    return result


def leakage(result: dict, split: str) -> float:
    """Mean of (fg_from_bg - chance fg) and (bg_from_fg - chance bg): 0 when nothing leaks."""
    r, c = result[split], result["chance"]
    return 0.5 * ((r["fg_from_bg"]["top1"] - c["fg"]) + (r["bg_from_fg"]["top1"] - c["bg"]))


def format_table(result: dict) -> str:
    lines = [f"{'split':<12} {'probe':<11} {'top1':>7} {'top5':>7} {'train':>7} {'chance':>7}"]
    for split, probes in result.items():
        if split == "chance":
            continue
        for name, r in probes.items():
            c = result["chance"][name.split("_")[0]]
            lines.append(f"{split:<12} {name:<11} {r['top1']:7.3f} {r['top5']:7.3f} {r['train_top1']:7.3f} {c:7.3f}")
    return "\n".join(lines)


# --- feature extraction for a checkpoint and a dataset -----------------------------------------------

def load_for_data(checkpoint: str, data: str, split: str = "train", backbone: str | None = None):
    """The checkpoint as the model that reads ``data``: for a features dataset, the neck and heads of a
    frozen-features checkpoint; for images, the image extractor of either kind (a frozen one is joined
    to its backbone, or to ``backbone``)."""
    from .data import is_features, load_split
    from .models import load_disentangler, load_extractor

    return load_disentangler(checkpoint) if is_features(load_split(data, split)) else load_extractor(checkpoint, backbone)


def split_features(model, data: str, split: str, batch_size: int = 256, device: str | None = None) -> dict[str, torch.Tensor]:
    """``{"z_fg", "z_bg", "fg", "bg"}`` of one split, after checking the checkpoint matches the data."""
    from .data import extract, label_info, load_split, table_for

    ds = load_split(data, split)
    info = label_info(ds, f"{data} ({split})")
    model.check_labels(info.fg_names, info.bg_names, where=f"{data}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    table = table_for(ds, model)
    check_feature_dim(model, table, f"{data} ({split})")
    z = extract(model, table, batch_size=batch_size, device=device, progress=True)
    z_fg, z_bg = model.split(z)
    return {"z_fg": z_fg, "z_bg": z_bg, "fg": table.fg, "bg": table.bg}


def check_feature_dim(model, table, where: str) -> None:
    """Refuse features of another size than the model's neck takes (they come from another backbone)."""
    from .models import ModelError

    if hasattr(table, "dim") and table.dim != model.feature_dim:
        raise ModelError(f"{where} has {table.dim} features per row, but the checkpoint's neck takes {model.feature_dim} "
                         f"(the features of {model.backbone_name or 'another backbone'}).")


def probe(data: str, checkpoint: str, out: str | None = None, train_split: str = "train", eval_split: str = "validation",
          l2: float = 1e-4, batch_size: int = 256, backbone: str | None = None) -> dict:
    """``d3s probe``: fit the four probes on ``train_split`` and report on ``eval_split``.

    ``backbone`` joins a frozen-features checkpoint to that backbone on image data (default: the recorded one).
    """
    model = load_for_data(checkpoint, data, train_split, backbone)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = split_features(model, data, train_split, batch_size, device)
    evaluation = split_features(model, data, eval_split, batch_size, device)
    result = run_probes(train, {eval_split: evaluation}, l2=l2, device=device)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def export_features(data: str, checkpoint: str, split: str, out: str, batch_size: int = 256,
                    backbone: str | None = None) -> dict[str, np.ndarray]:
    """``d3s features``: write ``z_fg``, ``z_bg``, ``fg``, ``bg`` of a split to an ``.npz`` file."""
    model = load_for_data(checkpoint, data, split, backbone)
    feats = split_features(model, data, split, batch_size)
    arrays = {k: v.numpy() for k, v in feats.items()}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return arrays
