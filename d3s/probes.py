"""Probes on frozen features (paper, Table 2): how much of each label each feature part holds.

A probe that under-fits hides leakage, so both kinds are fitted with care, on standardised features
(mean and std of the probe's train split), and report their train accuracy beside the held-out one:

- ``linear``: multinomial logistic regression fitted to convergence with full-batch L-BFGS and a
  small L2 penalty (which makes the optimum unique and finite even on separable data). The paper's probe.
- ``mlp``: one hidden layer (ReLU), Adam, early stopping on a held-out part of the train split. What a
  skeptic uses: information a critic left in a nonlinear form is invisible to the linear probe.

::

    d3s probe --data out/toy --checkpoint out/run --probe both --out probe.json
    d3s features --data out/toy --checkpoint out/run --split validation --out val.npz
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PROBES = {  # name: (features, label)
    "fg_from_fg": ("z_fg", "fg"),
    "bg_from_bg": ("z_bg", "bg"),
    "fg_from_bg": ("z_bg", "fg"),
    "bg_from_fg": ("z_fg", "bg"),
}


PROBE_KINDS = ("linear", "mlp")


class ProbeError(ValueError):
    """An unknown probe kind."""


@dataclass
class Probe:
    """A fitted probe: standardisation, then a map to the logits of ``classes``."""

    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor  # label value of each output

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
        if len(y) == 0:
            return float("nan")
        k = min(k, len(self.classes))
        top = self.logits(x).topk(k, dim=1).indices
        return (self.classes[top] == y[:, None]).any(1).float().mean().item()


@dataclass
class LinearProbe(Probe):
    weight: torch.Tensor = None
    bias: torch.Tensor = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


@dataclass
class MLPProbe(Probe):
    net: nn.Module = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def to_cpu(self) -> "MLPProbe":
        self.net = self.net.cpu().eval()
        return self


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
    return LinearProbe(mean.cpu(), std.cpu(), classes.cpu(), weight=w.detach().cpu(), bias=b.detach().cpu())


def fit_mlp_probe(x: torch.Tensor, y: torch.Tensor, hidden: int = 512, held_out: float = 0.2, patience: int = 10,
                  max_epochs: int = 200, batch_size: int = 256, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                  device: str | torch.device = "cpu") -> MLPProbe:
    """One hidden layer (ReLU) on standardised ``x``, Adam, early stopping on a held-out part of the rows.

    Args:
        x (`torch.Tensor`), y (`torch.Tensor`): (N, D) features and (N,) integer labels.
        hidden (`int`, defaults to 512): hidden units; wide, so the probe is not the bottleneck.
        held_out (`float`, defaults to 0.2): share of the rows (seeded draw) kept out of fitting to
            pick the epoch: the weights of the epoch with the best held-out accuracy are kept.
        patience (`int`, defaults to 10): stop after this many epochs without a better held-out accuracy.
    """
    g = torch.Generator().manual_seed(seed)
    x = x.to(torch.float32)
    classes, target = torch.unique(y, return_inverse=True)
    perm = torch.randperm(len(x), generator=g)
    n_val = max(1, int(round(held_out * len(x)))) if len(x) > 1 else 0
    val, fit = perm[:n_val], perm[n_val:]
    mean, std = x[fit].mean(0), x[fit].std(0).clamp(min=1e-6)
    xs = ((x - mean) / std).to(device)
    target = target.to(device)
    torch.manual_seed(seed)  # the initial weights
    net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, len(classes))).to(device)
    probe = MLPProbe(mean, std, classes, net=net)
    if len(classes) < 2 or len(fit) == 0:
        return probe.to_cpu()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    best, best_state, since = -1.0, None, 0
    for _ in range(max_epochs):
        net.train()
        for rows in fit[torch.randperm(len(fit), generator=g)].split(batch_size):
            loss = F.cross_entropy(net(xs[rows]), target[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(xs[val]).argmax(1) == target[val]).float().mean().item()
        if acc > best:
            best, best_state, since = acc, {k: v.clone() for k, v in net.state_dict().items()}, 0
        else:
            since += 1
            if since >= patience:
                break
    net.load_state_dict(best_state)
    return probe.to_cpu()


def fit(kind: str, x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, device: str | torch.device = "cpu") -> Probe:
    """Fit a probe of ``kind`` (``linear`` or ``mlp``)."""
    if kind == "linear":
        return fit_probe(x, y, l2=l2, device=device)
    if kind == "mlp":
        return fit_mlp_probe(x, y, device=device)
    raise ProbeError(f"unknown probe {kind!r}; choose from {', '.join(PROBE_KINDS)} (or both).")


def probe_kinds(spec: str) -> tuple[str, ...]:
    """``linear``, ``mlp`` or ``both`` -> the kinds to fit."""
    if spec == "both":
        return PROBE_KINDS
    if spec not in PROBE_KINDS:
        raise ProbeError(f"unknown --probe {spec!r}; choose from {', '.join(PROBE_KINDS)} or both.")
    return (spec,)


def chance(train_labels: torch.Tensor, eval_labels: torch.Tensor) -> float:
    """Accuracy of always answering the train split's most frequent class (1/K when balanced)."""
    if len(eval_labels) == 0:
        return float("nan")
    majority = torch.bincount(train_labels).argmax()
    return (eval_labels == majority).float().mean().item()


def run_probes(train: dict[str, torch.Tensor], evals: dict[str, dict[str, torch.Tensor]], l2: float = 1e-4,
               device: str | torch.device = "cpu", kinds: tuple[str, ...] = ("linear",)) -> dict:
    """The four probes of each kind, fitted on ``train`` (z_fg, z_bg, fg, bg) and scored on each eval split.

    An eval split without bg labels (``bg`` all -1: ImageNet, Table 2's ImageNet rows) is scored by the
    two fg probes only. Returns ``{kind: {split: {probe: {"top1", "top5", "train_top1"}}, "chance": {"fg", "bg"}}}``;
    chance is that of the first eval split.
    """
    result: dict = {}
    first = next(iter(evals.values()))
    for kind in kinds:
        fitted = {name: fit(kind, train[feat], train[lab], l2=l2, device=device) for name, (feat, lab) in PROBES.items()}
        result[kind] = {}
        for split, data in evals.items():
            has_bg = bool((data["bg"] >= 0).any())
            result[kind][split] = {}
            for name, (feat, lab) in PROBES.items():
                if lab == "bg" and not has_bg:
                    continue
                p = fitted[name]
                result[kind][split][name] = {
                    "top1": p.accuracy(data[feat], data[lab], 1),
                    "top5": p.accuracy(data[feat], data[lab], 5),
                    "train_top1": p.accuracy(train[feat], train[lab], 1),
                }
        result[kind]["chance"] = {"fg": chance(train["fg"], first["fg"]), "bg": chance(train["bg"], first["bg"])}
    return result


def by_kind(result: dict) -> dict:
    """A probe.json's results keyed by probe kind; files written before MLP probes existed hold the linear ones alone."""
    return {"linear": result} if "chance" in result else result


def leakage(result: dict, split: str, kind: str = "linear") -> float:
    """Mean of (fg_from_bg - chance fg) and (bg_from_fg - chance bg) for probes of ``kind``: 0 when nothing leaks."""
    r, c = result[kind][split], result[kind]["chance"]
    return 0.5 * ((r["fg_from_bg"]["top1"] - c["fg"]) + (r["bg_from_fg"]["top1"] - c["bg"]))


def format_table(result: dict) -> str:
    lines = [f"{'kind':<7} {'split':<12} {'probe':<11} {'top1':>7} {'top5':>7} {'train':>7} {'chance':>7}"]
    for kind in (k for k in PROBE_KINDS if k in result):
        for split, probes in result[kind].items():
            if split == "chance":
                continue
            for name, r in probes.items():
                c = result[kind]["chance"][name.split("_")[0]]
                top5 = f"{r['top5']:7.3f}" if c < 0.2 else f"{'-':>7}"  # chance >= 1/5: 5 classes or fewer, top-5 is always right
                lines.append(f"{kind:<7} {split:<12} {name:<11} {r['top1']:7.3f} {top5} {r['train_top1']:7.3f} {c:7.3f}")
    return "\n".join(lines)


# --- feature extraction for a checkpoint and a dataset -----------------------------------------------

def load_for_data(checkpoint: str, data: str, split: str = "train", backbone: str | None = None):
    """The checkpoint as the model that reads ``data``: for a features dataset, the neck and heads of a
    frozen-features checkpoint; for images, the image extractor of either kind (a frozen one is joined
    to its backbone, or to ``backbone``)."""
    from .data import is_features, load_split
    from .models import load_disentangler, load_extractor

    return load_disentangler(checkpoint) if is_features(load_split(data, split)) else load_extractor(checkpoint, backbone)


def split_features(model, data: str, split: str, batch_size: int = 256, device: str | None = None,
                   need_bg: bool = True) -> dict[str, torch.Tensor]:
    """``{"z_fg", "z_bg", "fg", "bg"}`` of one split, after checking the checkpoint matches the data.

    With ``need_bg=False`` a split without bg labels (ImageNet: ``fg`` or ``label`` only) is read too,
    its ``bg`` all -1; its fg classes must be the checkpoint's (or their first ones).
    """
    from .data import extract, label_info, load_split, table_for
    from .models import ModelError

    ds = load_split(data, split, need_bg=need_bg)
    info = label_info(ds, f"{data} ({split})", need_bg=need_bg)
    if info.bg_names is not None:
        model.check_labels(info.fg_names, info.bg_names, where=f"{data}")
    elif info.fg_names != model.fg_names[: len(info.fg_names)]:
        raise ModelError(f"the fg classes of {data} ({split}) are not the checkpoint's {len(model.fg_names)} fg classes.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    table = table_for(ds, model, fg_column="fg" if "fg" in ds.column_names else "label")
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
          l2: float = 1e-4, batch_size: int = 256, kinds: tuple[str, ...] = ("linear",), imagenet: str | None = None,
          imagenet_split: str = "validation", backbone: str | None = None) -> dict:
    """``d3s probe``: fit the four probes of each kind on ``train_split`` and report on ``eval_split``.

    ``imagenet`` (a dataset with fg labels only) adds Table 2's ImageNet rows: the fg probes fitted on
    ``train_split`` scored on its ``imagenet_split``. An ``eval_split`` without bg labels gets the fg probes only.
    ``backbone`` joins a frozen-features checkpoint to that backbone on image data (default: the recorded one).
    """
    for kind in kinds:
        probe_kinds(kind)  # refuse an unknown kind before any feature is computed
    model = load_for_data(checkpoint, data, train_split, backbone)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train = split_features(model, data, train_split, batch_size, device)
    evals = {eval_split: split_features(model, data, eval_split, batch_size, device, need_bg=False)}
    if imagenet:
        evals["imagenet"] = split_features(model, imagenet, imagenet_split, batch_size, device, need_bg=False)
    result = run_probes(train, evals, l2=l2, device=device, kinds=kinds)
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
