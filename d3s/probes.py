"""Probes on frozen features (paper, Table 2): how much of each label each feature part holds.

A probe measures what a part holds only on rows that nothing it judges was fitted on. The encoder, its critics and
its LEACE erasers are all fitted on the train split, and there an erased label reads at chance by construction (the
erased part has the same mean in every class, so the best linear classifier is a constant). So by default the probes
are **cross-fitted** on the scored split: its rows are cut into ``folds`` parts (whole objects of paired data together,
classes spread evenly), each part is scored by probes fitted on the others, and the accuracies are pooled
(``fit_split`` fits on another split instead, e.g. a third one the model never saw; on ``train`` the report says the
rows are the model's own). Every result records how its probes were fitted (``fit``).

Three kinds of probe, each fitted with care on standardised features (mean and std of its fit rows), each reporting
its accuracy on its own fit rows beside the held-out one:

- ``linear``: multinomial logistic regression fitted to convergence with full-batch L-BFGS and a small L2 penalty
  (which makes the optimum unique and finite even on separable data); the result records the iterations and the
  largest gradient entry left, and says so when the fit stopped before converging. The paper's probe.
- ``mlp``: a linear path (started at the linear probe's solution) plus one hidden ReLU layer, Adam; width, learning
  rate and epochs are chosen on a held-out fifth of the fit rows, the linear start included, so on those rows it is
  never weaker than the linear probe. What a skeptic uses: information left in a nonlinear form is invisible to the
  linear probe.
- ``kernel``: RBF kernel ridge regression on the one-hot labels, on a class-stratified subsample of the fit rows;
  bandwidth and ridge chosen on a held-out fifth of them. A second skeptic, of another family.

::

    d3s probe --data out/toy --checkpoint out/run --probe all --out probe.json      # cross-fitted on validation
    d3s probe --data out/toy --checkpoint out/run --fit-split extra --split validation  # fitted on a third split
    d3s features --data out/toy --checkpoint out/run --split validation --out val.npz
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .choices import PROBE_FOLDS, PROBE_KINDS, PROBE_SETS

PROBES = {  # name: (features, label)
    "fg_from_fg": ("z_fg", "fg"),
    "bg_from_bg": ("z_bg", "bg"),
    "fg_from_bg": ("z_bg", "fg"),
    "bg_from_fg": ("z_fg", "bg"),
}
CROSS = ("fg_from_bg", "bg_from_fg")  # the leakage probes: each label read from the other label's part
META = ("chance", "fit")  # the keys of a kind's result that are not scored splits
INNER_SHARE = 0.2  # the share of a probe's fit rows held out to choose its settings (mlp, kernel)
CONVERGED_GRAD = 1e-4  # the linear probe counts as converged when no gradient entry is larger


class ProbeError(ValueError):
    """An unknown probe kind or name, or rows a probe cannot be fitted on."""


# --- the probes ------------------------------------------------------------------------------------

@dataclass
class Probe:
    """A fitted probe: standardisation, then a map to the logits of ``classes``."""

    mean: torch.Tensor
    std: torch.Tensor
    classes: torch.Tensor  # label value of each output
    info: dict = field(default_factory=dict)  # how it was fitted (settings chosen, convergence)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor, k: int = 1) -> float:
        return float(self.hits(x, y, k).float().mean()) if len(y) else float("nan")

    @torch.no_grad()
    def hits(self, x: torch.Tensor, y: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Whether each row's label is among the ``k`` highest logits (bool, one per row)."""
        k = min(k, len(self.classes))
        out = []
        for rows in torch.arange(len(y)).split(4096):
            top = self.logits(x[rows]).topk(k, dim=1).indices
            out.append((self.classes[top] == y[rows, None]).any(1))
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.bool)


@dataclass
class LinearProbe(Probe):
    weight: torch.Tensor = None
    bias: torch.Tensor = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardise(x) @ self.weight.T + self.bias


class SkipMLP(nn.Module):
    """``linear(x) + out(relu(hidden(x)))``: a linear path beside one hidden layer. With ``out`` at zero (its start)
    it is the linear map alone."""

    def __init__(self, dim: int, hidden: int, classes: int):
        super().__init__()
        self.linear, self.hidden, self.out = nn.Linear(dim, classes), nn.Linear(dim, hidden), nn.Linear(hidden, classes, bias=False)
        nn.init.zeros_(self.out.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.out(F.relu(self.hidden(x)))


@dataclass
class MLPProbe(Probe):
    net: nn.Module = None

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardise(x))


@dataclass
class KernelProbe(Probe):
    rows: torch.Tensor = None  # the standardised rows it was fitted on
    alpha: torch.Tensor = None  # their dual coefficients, one column per class
    offset: torch.Tensor = None  # the class shares of the fit rows
    gamma: float = 1.0

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return rbf(self.standardise(x).double(), self.rows, self.gamma) @ self.alpha + self.offset


def _standardiser(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.float()
    return x.mean(0), x.std(0).clamp(min=1e-6) if len(x) > 1 else torch.ones(x.shape[1])


def fit_probe(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, max_iter: int = 500, device: str | torch.device = "cpu",
              start: LinearProbe | None = None) -> LinearProbe:
    """Multinomial logistic regression on standardised ``x``, fitted to convergence (L-BFGS).

    Args:
        x (`torch.Tensor`): (N, D) features.
        y (`torch.Tensor`): (N,) integer labels; only the values present are classes of the probe.
        l2 (`float`, defaults to 1e-4): weight penalty ``l2 / 2 * |W|^2``; small, so the probe reads
            anything linearly readable, yet large enough for the optimum to be finite.
        max_iter (`int`, defaults to 500): L-BFGS iterations (it stops earlier at convergence).
        start (`LinearProbe`, *optional*): a probe of similar rows to start from (the optimum is unique, so the start
            changes how many iterations it takes, not where it ends).

    ``info`` records ``iterations``, ``grad_max`` (the largest gradient entry at the end) and ``converged``
    (``grad_max`` under :data:`CONVERGED_GRAD`).
    """
    mean, std = _standardiser(x)
    xs = ((x.float() - mean) / std).to(device)
    classes, target = torch.unique(y, return_inverse=True)
    target = target.to(device)
    w0, b0 = _restandardised(start, mean, std, classes) if start is not None else (None, None)
    w = (w0 if w0 is not None else torch.zeros(len(classes), x.shape[1])).to(device)
    b = (b0 if b0 is not None else torch.zeros(len(classes))).to(device)
    info = {"iterations": 0, "grad_max": 0.0, "converged": True}
    if len(classes) > 1:
        w, b, info = _lbfgs(xs, target, w, b, l2, max_iter)
        if not info["converged"] and info["iterations"] < max_iter and xs.device.type != "mps":
            # L-BFGS stopped where float32 no longer sees the loss change, short of the gradient target:
            # polish the same optimum in float64 (a few iterations)
            w, b, polish = _lbfgs(xs.double(), target, w.double(), b.double(), l2, max_iter - info["iterations"])
            info = {**polish, "iterations": info["iterations"] + polish["iterations"]}
            w, b = w.float(), b.float()
    return LinearProbe(mean, std, classes, info, weight=w.detach().cpu(), bias=b.detach().cpu())


def _lbfgs(xs: torch.Tensor, target: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float, max_iter: int):
    """L-BFGS on the probe's penalised cross-entropy from ``(w, b)``, in their dtype: ``(w, b, info)``."""
    w, b = w.clone().requires_grad_(True), b.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                            tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w.T + b, target) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    closure()
    grad_max = float(torch.cat([w.grad.flatten(), b.grad.flatten()]).abs().max())
    info = {"iterations": int(opt.state[w]["n_iter"]), "grad_max": grad_max, "converged": grad_max < CONVERGED_GRAD}
    return w.detach(), b.detach(), info


def _restandardised(probe: LinearProbe, mean: torch.Tensor, std: torch.Tensor, classes: torch.Tensor):
    """``probe``'s map rewritten for features standardised by ``mean`` and ``std`` (the same logits), on ``classes``
    (a class it lacks starts at zero); ``(None, None)`` when it reads other features."""
    if probe.weight.shape[1] != len(mean):
        return None, None
    w = probe.weight * (std / probe.std)
    b = probe.bias + ((mean - probe.mean) / probe.std) @ probe.weight.T
    out_w, out_b = torch.zeros(len(classes), len(mean)), torch.zeros(len(classes))
    where = torch.searchsorted(classes, probe.classes).clamp(max=len(classes) - 1)
    known = classes[where] == probe.classes
    out_w[where[known]], out_b[where[known]] = w[known], b[known]
    return out_w, out_b


MLP_GRID = ({"hidden": 512, "lr": 1e-3}, {"hidden": 2048, "lr": 1e-3})  # the settings tried on every fit


def _skip_mlp(start: LinearProbe, classes: torch.Tensor, hidden: int, seed: int) -> SkipMLP:
    """A :class:`SkipMLP` whose linear path is ``start`` (its classes placed among ``classes``; one it lacks never wins)."""
    torch.manual_seed(seed)  # the hidden layer's initial weights
    net = SkipMLP(start.weight.shape[1], hidden, len(classes))
    where = torch.searchsorted(classes, start.classes)
    with torch.no_grad():
        net.linear.weight.zero_()
        net.linear.bias.fill_(-1e4)
        net.linear.weight[where], net.linear.bias[where] = start.weight, start.bias
    return net


def _train_epoch(net: nn.Module, opt, xs: torch.Tensor, target: torch.Tensor, rows: torch.Tensor, batch_size: int, g) -> None:
    net.train()
    for batch in rows[torch.randperm(len(rows), generator=g)].split(batch_size):
        loss = F.cross_entropy(net(xs[batch]), target[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def fit_mlp_probe(x: torch.Tensor, y: torch.Tensor, start: LinearProbe | None = None, grid: tuple[dict, ...] = MLP_GRID,
                  patience: int = 3, max_epochs: int = 60, batch_size: int = 256, weight_decay: float = 1e-4, l2: float = 1e-4,
                  seed: int = 0, device: str | torch.device = "cpu", groups: torch.Tensor | None = None) -> MLPProbe:
    """A :class:`SkipMLP` on standardised ``x``, its linear path started at the linear probe's solution.

    The setting of ``grid`` and the number of epochs are chosen on a held-out fifth of the rows (:data:`INNER_SHARE`,
    whole groups): each setting trains from the linear probe of the other four fifths, and 0 epochs (the linear
    probe itself) is among the choices. The choice is then trained on all rows from ``start`` (the linear probe of
    all rows; fitted when not given), so with 0 epochs the MLP probe *is* the linear probe.

    Args:
        x (`torch.Tensor`), y (`torch.Tensor`): (N, D) features and (N,) integer labels.
        start (`LinearProbe`, *optional*): :func:`fit_probe` of the same rows, when already fitted.
        grid (`tuple[dict]`, defaults to :data:`MLP_GRID`): the settings tried: ``hidden`` width and Adam's ``lr``.
        patience (`int`, defaults to 3): a setting stops after this many epochs without a better held-out accuracy.
        max_epochs (`int`, defaults to 60): the most epochs of one setting.
    """
    classes, target = torch.unique(y, return_inverse=True)
    start = start or fit_probe(x, y, l2=l2, device=device)
    fit_rows, val = inner_split(y, groups, seed)
    g = torch.Generator().manual_seed(seed)
    best = {"accuracy": -1.0, "hidden": 0, "lr": None, "epochs": 0}
    if len(classes) > 1 and len(val):
        inner = fit_probe(x[fit_rows], y[fit_rows], l2=l2, device=device, start=start)
        xs = inner.standardise(x).to(device)
        tgt = target.to(device)
        for setting in grid:
            net = _skip_mlp(inner, classes, setting["hidden"], seed).to(device)
            opt = torch.optim.Adam(net.parameters(), lr=setting["lr"], weight_decay=weight_decay)
            own, since = -1.0, 0
            for epoch in range(max_epochs + 1):
                if epoch:
                    _train_epoch(net, opt, xs, tgt, fit_rows, batch_size, g)
                net.eval()
                with torch.no_grad():
                    acc = float((net(xs[val]).argmax(1) == tgt[val]).float().mean())
                if acc > best["accuracy"]:
                    best = {"accuracy": acc, **setting, "epochs": epoch} if epoch else {**best, "accuracy": acc}
                if acc > own:
                    own, since = acc, 0
                else:
                    since += 1
                    if since >= patience:
                        break
    net = _skip_mlp(start, classes, best["hidden"] or 1, seed).to(device)
    if best["epochs"]:
        xs, tgt = start.standardise(x).to(device), target.to(device)
        opt = torch.optim.Adam(net.parameters(), lr=best["lr"], weight_decay=weight_decay)
        for _ in range(best["epochs"]):
            _train_epoch(net, opt, xs, tgt, torch.arange(len(x)), batch_size, g)
    info = {"hidden": best["hidden"], "lr": best["lr"], "epochs": best["epochs"], "inner_accuracy": round(best["accuracy"], 4),
            "inner_rows": len(val)}
    return MLPProbe(start.mean, start.std, classes, info, net=net.cpu().eval())


def rbf(a: torch.Tensor, b: torch.Tensor, gamma: float) -> torch.Tensor:
    """``exp(-gamma |a_i - b_j|^2)``, (len(a), len(b))."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
    return torch.exp(-gamma * d.clamp(min=0))


KERNEL_ROWS = 3000  # the kernel probe's subsample of its fit rows (its cost grows with the cube)
KERNEL_SCALES = (0.5, 1.0, 2.0)  # bandwidths tried: gamma = scale / (median squared distance)
KERNEL_RIDGES = (1e-3, 1e-2, 1e-1, 1.0)  # ridges tried, times the number of rows


def fit_kernel_probe(x: torch.Tensor, y: torch.Tensor, max_rows: int = KERNEL_ROWS, scales: tuple[float, ...] = KERNEL_SCALES,
                     ridges: tuple[float, ...] = KERNEL_RIDGES, seed: int = 0, groups: torch.Tensor | None = None) -> KernelProbe:
    """RBF kernel ridge regression on the centred one-hot labels of at most ``max_rows`` rows (a class-stratified
    subsample), on standardised ``x``; bandwidth and ridge chosen on a held-out fifth of those rows, then refitted
    on all of them."""
    classes, target = torch.unique(y, return_inverse=True)
    keep = subsample(y, max_rows, seed)
    x, target = x[keep], target[keep]
    groups = groups[keep] if groups is not None else None
    mean, std = _standardiser(x)
    xs = ((x.float() - mean) / std).double()
    onehot = F.one_hot(target, len(classes)).double()
    offset = onehot.mean(0)
    if len(classes) < 2:
        return KernelProbe(mean, std, classes, {"rows": len(keep)}, rows=xs[:1], alpha=torch.zeros(1, len(classes), dtype=torch.float64),
                           offset=offset, gamma=1.0)
    fit, val = inner_split(target, groups, seed)
    sample = xs[torch.randperm(len(xs), generator=torch.Generator().manual_seed(seed))[:1000]]
    median = float(torch.cdist(sample, sample).pow(2).median().clamp(min=1e-12))
    best = (-1.0, None, None)
    for scale in scales:
        gamma = scale / median
        evals, vecs = torch.linalg.eigh(rbf(xs[fit], xs[fit], gamma))
        right = vecs.T @ (onehot[fit] - offset)  # (n, C)
        left = rbf(xs[val], xs[fit], gamma) @ vecs  # (m, n)
        for ridge in ridges:
            pred = left @ (right / (evals.clamp(min=0) + ridge * len(fit))[:, None])
            acc = float((pred.argmax(1) == target[val]).double().mean())
            if acc > best[0]:
                best = (acc, scale, ridge)
    acc, scale, ridge = best
    gamma = scale / median
    k = rbf(xs, xs, gamma)
    alpha = torch.linalg.solve(k + ridge * len(xs) * torch.eye(len(xs), dtype=torch.float64), onehot - offset)
    info = {"rows": len(xs), "scale": scale, "ridge": ridge, "inner_accuracy": round(acc, 4), "inner_rows": len(val)}
    return KernelProbe(mean, std, classes, info, rows=xs, alpha=alpha, offset=offset, gamma=gamma)


def fit(kind: str, x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, device: str | torch.device = "cpu",
        groups: torch.Tensor | None = None, seed: int = 0) -> Probe:
    """Fit a probe of ``kind`` (:data:`d3s.choices.PROBE_KINDS`) on the rows ``x``, labels ``y`` (``groups``: rows
    that must stay on one side of a probe's own held-out split)."""
    return fit_kinds((kind,), x, y, l2=l2, device=device, groups=groups, seed=seed)[kind]


def fit_kinds(kinds: tuple[str, ...], x: torch.Tensor, y: torch.Tensor, l2: float = 1e-4, device: str | torch.device = "cpu",
              groups: torch.Tensor | None = None, seed: int = 0) -> dict[str, Probe]:
    """A probe of each of ``kinds`` on the same rows; the MLP probe starts from the linear one, fitted once."""
    unknown = [k for k in kinds if k not in PROBE_KINDS]
    if unknown:
        raise ProbeError(f"unknown probe {unknown[0]!r}; choose from {', '.join(PROBE_KINDS)}.")
    probes: dict[str, Probe] = {}
    linear = fit_probe(x, y, l2=l2, device=device) if {"linear", "mlp"} & set(kinds) else None
    for kind in kinds:
        if kind == "linear":
            probes[kind] = linear
        elif kind == "mlp":
            probes[kind] = fit_mlp_probe(x, y, start=linear, l2=l2, device=device, groups=groups, seed=seed)
        else:
            probes[kind] = fit_kernel_probe(x, y, groups=groups, seed=seed)
    return probes


def probe_kinds(spec: str) -> tuple[str, ...]:
    """``--probe``: a comma list of kinds (:data:`d3s.choices.PROBE_KINDS`), or ``both`` (linear and mlp) or ``all``."""
    if spec in PROBE_SETS:
        return PROBE_SETS[spec]
    kinds = tuple(dict.fromkeys(k.strip() for k in spec.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in PROBE_KINDS]
    if unknown or not kinds:
        raise ProbeError(f"unknown --probe {spec!r}; choose from {', '.join(PROBE_KINDS)} (a comma list), both (linear,mlp) or all.")
    return kinds


def probe_names(spec: str) -> tuple[str, ...]:
    """``--probes``: ``all`` (the four of Table 2), ``cross`` (the two leakage probes) or a comma list of names."""
    if spec == "all":
        return tuple(PROBES)
    if spec == "cross":
        return CROSS
    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n not in PROBES]
    if unknown or not names:
        raise ProbeError(f"unknown --probes {spec!r}; choose from {', '.join(PROBES)} (a comma list), cross or all.")
    return names


# --- which rows fit, which rows score ----------------------------------------------------------------

def _spread(keys: np.ndarray, k: int, rng: np.random.Generator, within: np.ndarray | None = None) -> np.ndarray:
    """Fold of each item, dealt out in turn within each key from a random fold: a key's items ordered by ``within``
    (its values in an order drawn afresh for each key) and at random inside. So each key's items, each (key,
    within) pair's, and each ``within`` value's over all keys, are spread over the folds as evenly as counts allow.

    Each key starts at its own random fold and ranks its ``within`` values in its own order: dealing all items in one
    sequence instead, with one row per (fg, bg) pair and an even number of backgrounds, puts every background in a
    single fold (the fold is then a function of the background), and a probe scored on another fold reads 0.
    """
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    _, key = np.unique(keys, return_inverse=True)
    if within is None:
        rank_of_value = np.zeros(n)
    else:
        _, value = np.unique(within, return_inverse=True)
        rank_of_value = rng.random((key.max() + 1, value.max() + 1))[key, value]
    order = np.lexsort((rng.random(n), rank_of_value, key))
    sorted_key = key[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_key)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    offset = rng.integers(0, k, size=key.max() + 1)
    out = np.empty(n, dtype=np.int64)
    out[order] = (rank + offset[sorted_key]) % k
    return out


def fold_ids(fg: torch.Tensor, bg: torch.Tensor | None, k: int, seed: int = 0, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The fold (``0..k-1``) of each row: whole groups (the object of paired data) in one fold; each fg class, each
    (fg, bg) pair and each bg class spread evenly over the folds; a function of ``seed``."""
    rng = np.random.default_rng([seed, 17])
    fg_np = fg.numpy()
    if groups is not None:
        uniq, first, inverse = np.unique(groups.numpy(), return_index=True, return_inverse=True)
        return torch.from_numpy(_spread(fg_np[first], k, rng)[inverse])
    within = bg.numpy() if bg is not None and bool((bg >= 0).any()) else None
    return torch.from_numpy(_spread(fg_np, k, rng, within))


def inner_split(y: torch.Tensor, groups: torch.Tensor | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows to fit on and rows held out (:data:`INNER_SHARE`, classes spread evenly, whole groups) to choose a probe's
    settings on; no row held out when there are fewer than 10."""
    if len(y) < 10:
        return torch.arange(len(y)), torch.arange(0)
    parts = round(1 / INNER_SHARE)
    folds = fold_ids(y, None, parts, seed + 1, groups)
    return torch.nonzero(folds != 0).flatten(), torch.nonzero(folds == 0).flatten()


def subsample(y: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """At most ``n`` row indices, every class kept in proportion (dealt out as :func:`fold_ids` does)."""
    if len(y) <= n:
        return torch.arange(len(y))
    parts = math.ceil(len(y) / n)
    folds = fold_ids(y, None, parts, seed + 2)
    return torch.nonzero(folds == 0).flatten()[:n]


def chance(fit_labels: torch.Tensor, eval_labels: torch.Tensor) -> float:
    """Accuracy of always answering the fit rows' most frequent class (1/K when balanced)."""
    if len(eval_labels) == 0 or len(fit_labels) == 0:
        return float("nan")
    majority = torch.bincount(fit_labels).argmax()
    return (eval_labels == majority).float().mean().item()


# --- the four probes of each kind, held out ------------------------------------------------------------

@dataclass
class FitRows:
    """How probes are fitted: cross-fitted on the scored split (``split`` None) or on the rows of ``split``.

    Args:
        split (`str`, *optional*): a split to fit on; None: cross-fit within the (first) scored split.
        folds (`int`, defaults to 2): folds of the cross-fit.
        model_rows (`tuple[str]`): the splits the model, its critics or its erasers were fitted on (``train``, and
            the erasers' split): fitting a probe there is said on every line that reports it.
        seed (`int`, defaults to 0): the folds and the probes' own draws.
    """

    split: str | None = None
    folds: int = PROBE_FOLDS
    model_rows: tuple[str, ...] = ("train",)
    seed: int = 0

    def describe(self, scored: str, rows: int) -> dict:
        """The ``fit`` record of results scored on ``scored``: where the probes were fitted, and whether the model was."""
        if self.split is None:
            return {"split": scored, "folds": self.folds, "rows": rows, "held_out": True,
                    "text": f"cross-fitted on {scored}: {self.folds} folds, each scored by probes fitted on the others"}
        mine = self.split in self.model_rows
        text = (f"fitted on {self.split}, rows the model was fitted on (an erased label reads at chance there by construction)"
                if mine else f"fitted on {self.split}, rows the model never saw")
        return {"split": self.split, "folds": None, "rows": rows, "held_out": not mine, "text": text}

    @staticmethod
    def tag(info: dict) -> str:
        """``info`` (a ``fit`` record) in a few words, for a table line."""
        if info.get("folds"):
            return f"held out: {info['folds']}-fold on {info['split']}"
        return f"on {info['split']}" + (" (held out)" if info.get("held_out") else ": rows the model was fitted on")


def run_probes(evals: dict[str, dict[str, torch.Tensor]], fit_rows: FitRows | None = None,
               fit_data: dict[str, torch.Tensor] | None = None, kinds: tuple[str, ...] = ("linear",),
               names: tuple[str, ...] = tuple(PROBES), l2: float = 1e-4, device: str | torch.device = "cpu",
               progress: bool = False) -> dict:
    """The probes ``names`` of each kind, scored on each split of ``evals`` (each ``{z_fg, z_bg, fg, bg[, group]}``).

    Cross-fitted (``fit_rows.split`` None, the default): the first split of ``evals`` is cut into folds, each scored by
    probes fitted on the others (pooled over its rows); the other splits (ImageNet rows, fg labels only) are scored by
    probes fitted on all of the first. Otherwise the probes are fitted on ``fit_data`` (the rows of ``fit_rows.split``).
    A split without bg labels (``bg`` all -1) is scored by the fg probes only.

    Returns ``{kind: {split: {probe: {"top1", "top5", "fit_top1"}}, "chance": {"fg", "bg"}, "fit": {split: record}}}``
    (:meth:`FitRows.describe`; chance is that of the first split); a linear probe that did not converge says so
    (``"converged": false`` beside its numbers), and the MLP and kernel probes record the settings chosen.
    """
    from tqdm.auto import tqdm

    fit_rows = fit_rows or FitRows()
    unknown = [n for n in names if n not in PROBES] + [k for k in kinds if k not in PROBE_KINDS]
    if unknown:
        raise ProbeError(f"unknown probe {unknown[0]!r}; choose from {', '.join(PROBES)} and kinds {', '.join(PROBE_KINDS)}.")
    first_name, first = next(iter(evals.items()))
    cross = fit_rows.split is None
    if cross and fit_rows.folds < 2:
        raise ProbeError(f"cross-fitting needs at least 2 folds, got {fit_rows.folds}.")
    if not cross and fit_data is None:
        raise ProbeError(f"probes fitted on {fit_rows.split} need its rows (fit_data).")
    source = first if cross else fit_data  # the rows probes are fitted on for the splits scored whole
    whole = [s for s in evals if not (cross and s == first_name)]
    folds = fold_ids(first["fg"], first["bg"], fit_rows.folds, fit_rows.seed, first.get("group")) if cross else None
    scores: dict = {kind: {split: {} for split in evals} for kind in kinds}
    bar = tqdm(total=len(names), desc="probes", unit="probe", disable=not progress, leave=False)
    for name in names:
        feat, lab = PROBES[name]
        bar.set_postfix_str(name)
        if cross:
            for kind, numbers in _cross_fit(kinds, first[feat], first[lab], folds, first.get("group"), l2, device, fit_rows.seed).items():
                scores[kind][first_name][name] = numbers
        keep = source[lab] >= 0
        targets = [s for s in whole if bool((evals[s][lab] >= 0).any())]
        if targets and bool(keep.any()):
            groups = source["group"][keep] if source.get("group") is not None else None
            fitted = fit_kinds(kinds, source[feat][keep], source[lab][keep], l2=l2, device=device, groups=groups, seed=fit_rows.seed)
            for kind, probe in fitted.items():
                for split in targets:
                    has = evals[split][lab] >= 0
                    scores[kind][split][name] = _numbers(probe, evals[split][feat][has], evals[split][lab][has],
                                                         source[feat][keep], source[lab][keep])
        bar.update(1)
    bar.close()
    fit_info = {}
    for split in evals:
        if not cross:
            fit_info[split] = fit_rows.describe(split, len(fit_data["fg"]))
        elif split == first_name:
            fit_info[split] = fit_rows.describe(split, len(first["fg"]))
        else:
            fit_info[split] = {"split": first_name, "folds": None, "rows": len(first["fg"]), "held_out": True,
                               "text": f"fitted on all of {first_name}, scored on {split}: other rows"}
    label_chance = {label: chance(source[label][source[label] >= 0], first[label][first[label] >= 0]) for label in ("fg", "bg")}
    return {kind: {**{s: v for s, v in scores[kind].items() if v}, "chance": label_chance, "fit": fit_info} for kind in kinds}


def _numbers(probe: Probe, x: torch.Tensor, y: torch.Tensor, fit_x: torch.Tensor, fit_y: torch.Tensor) -> dict:
    r = {"top1": probe.accuracy(x, y, 1), "top5": probe.accuracy(x, y, 5), "fit_top1": probe.accuracy(fit_x, fit_y, 1)}
    if probe.info.get("converged") is False:
        r["converged"] = False
    if not isinstance(probe, LinearProbe):
        r["settings"] = probe.info
    return r


def _cross_fit(kinds: tuple[str, ...], x: torch.Tensor, y: torch.Tensor, folds: torch.Tensor, groups, l2, device,
               seed: int) -> dict[str, dict]:
    """Each fold scored by probes of ``kinds`` fitted on the other folds' labelled rows; accuracies pooled over the
    rows. ``{kind: numbers}``; nothing when the label is missing."""
    labelled = y >= 0
    hits: dict = {kind: {"top1": [], "top5": [], "fit": [], "settings": [], "converged": True} for kind in kinds}
    for f in range(int(folds.max()) + 1 if len(folds) else 0):
        fit_mask, score_mask = (folds != f) & labelled, (folds == f) & labelled
        if not bool(score_mask.any()) or not bool(fit_mask.any()):
            continue
        g = groups[fit_mask] if groups is not None else None
        for kind, probe in fit_kinds(kinds, x[fit_mask], y[fit_mask], l2=l2, device=device, groups=g, seed=seed).items():
            h = hits[kind]
            h["top1"].append(probe.hits(x[score_mask], y[score_mask], 1))
            h["top5"].append(probe.hits(x[score_mask], y[score_mask], 5))
            h["fit"].append(probe.accuracy(x[fit_mask], y[fit_mask]))
            h["converged"] &= probe.info.get("converged", True)
            h["settings"].append(probe.info)
    out = {}
    for kind, h in hits.items():
        if not h["top1"]:
            continue
        r = {"top1": float(torch.cat(h["top1"]).float().mean()), "top5": float(torch.cat(h["top5"]).float().mean()),
             "fit_top1": float(np.mean(h["fit"]))}
        if kind != "linear":
            r["settings"] = h["settings"]
        if not h["converged"]:
            r["converged"] = False
        out[kind] = r
    return out


def scored_splits(kind_result: dict):
    """``(split, {probe: numbers})`` of one kind's result, without its chance and fit records."""
    return ((s, v) for s, v in kind_result.items() if s not in META)


def by_kind(result: dict) -> dict:
    """A probe.json's results keyed by probe kind; files written before MLP probes existed hold the linear ones alone."""
    return {"linear": result} if "chance" in result else result


def leakage(result: dict, split: str, kind: str = "linear") -> float:
    """Mean of (fg_from_bg - chance fg) and (bg_from_fg - chance bg) for probes of ``kind``: 0 when nothing leaks."""
    r, c = result[kind][split], result[kind]["chance"]
    return 0.5 * ((r["fg_from_bg"]["top1"] - c["fg"]) + (r["bg_from_fg"]["top1"] - c["bg"]))


def fit_tag(kind_result: dict, split: str) -> str:
    """How the probes of one kind scored on ``split`` were fitted, in a few words (results of before held-out
    probes existed: on train, the model's own rows)."""
    info = (kind_result.get("fit") or {}).get(split)
    return FitRows.tag(info or {"split": "train", "held_out": False})


def format_table(result: dict) -> str:
    """Every probe on a line: top-1, top-5 (where chance is under 1/5), accuracy on its own fit rows, chance, and how
    it was fitted (held out, or on rows the model was fitted on)."""
    lines = [f"{'kind':<7} {'split':<12} {'probe':<11} {'top1':>7} {'top5':>7} {'fit':>7} {'chance':>7}  fitted"]
    for kind in (k for k in PROBE_KINDS if k in result):
        for split, probes in scored_splits(result[kind]):
            for name, r in probes.items():
                c = result[kind]["chance"][name.split("_")[0]]
                top5 = f"{r['top5']:7.3f}" if c < 0.2 else f"{'-':>7}"  # chance >= 1/5: 5 classes or fewer, top-5 is always right
                note = "" if r.get("converged", True) else "  (did not converge)"
                fit_acc = r.get("fit_top1", r.get("train_top1", float("nan")))
                lines.append(f"{kind:<7} {split:<12} {name:<11} {r['top1']:7.3f} {top5} {fit_acc:7.3f} {c:7.3f}  "
                             f"{fit_tag(result[kind], split)}{note}")
    return "\n".join(lines)


# --- feature extraction for a checkpoint and a dataset -----------------------------------------------

def load_for_data(checkpoint: str, data: str, split: str = "train", backbone: str | None = None):
    """The checkpoint as the model that reads ``data``: for a features dataset, the neck and heads of a
    frozen-features checkpoint; for images, the image extractor of either kind (a frozen one is joined
    to its backbone, or to ``backbone``)."""
    from .data import is_features, load_split
    from .models import load_disentangler, load_extractor

    return load_disentangler(checkpoint) if is_features(load_split(data, split, need_bg=False)) else load_extractor(checkpoint, backbone)


def split_features(model, data: str, split: str, batch_size: int = 256, device: str | None = None,
                   need_bg: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """``{"z_fg", "z_bg", "fg", "bg"}`` (and ``"group"`` for paired data) of one split, after checking the checkpoint
    matches the data.

    With ``need_bg=False`` a split without bg labels (ImageNet: ``fg`` or ``label`` only) is read too,
    its ``bg`` all -1; its fg classes must be the checkpoint's (or their first ones).
    """
    from .data import extract, groups_of, label_info, load_split, table_for
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
    z = extract(model, table, batch_size=batch_size, device=device, progress=progress)
    z_fg, z_bg = model.split(z)
    groups = groups_of(ds)
    return {"z_fg": z_fg, "z_bg": z_bg, "fg": table.fg, "bg": table.bg, **({"group": groups} if groups is not None else {})}


def check_feature_dim(model, table, where: str) -> None:
    """Refuse features of another size than the model's neck takes (they come from another backbone)."""
    from .models import ModelError

    if hasattr(table, "dim") and table.dim != model.feature_dim:
        raise ModelError(f"{where} has {table.dim} features per row, but the checkpoint's neck takes {model.feature_dim} "
                         f"(the features of {model.backbone_name or 'another backbone'}).")


def model_rows(model) -> tuple[str, ...]:
    """The splits a checkpoint was fitted on: ``train`` (the encoder and its critics) and its erasers' split."""
    split = (getattr(model, "erasure", None) or {}).get("split")
    return tuple(dict.fromkeys(("train", *([split] if split else []))))


def probe(data: str, checkpoint: str, out: str | None = None, eval_split: str = "validation", fit_split: str | None = None,
          folds: int = PROBE_FOLDS, l2: float = 1e-4, batch_size: int = 256, kinds: tuple[str, ...] = ("linear",),
          names: tuple[str, ...] = tuple(PROBES), imagenet: str | None = None, imagenet_split: str = "validation",
          backbone: str | None = None, seed: int = 0) -> dict:
    """``d3s probe``: the probes of each kind, held out: cross-fitted on ``eval_split`` (``folds`` folds), or fitted on
    ``fit_split`` and scored on ``eval_split``.

    ``imagenet`` (a dataset with fg labels only) adds Table 2's ImageNet rows: the fg probes fitted on the rows of
    ``eval_split`` (or of ``fit_split``) and scored on its ``imagenet_split``. An ``eval_split`` without bg labels gets
    the fg probes only. ``backbone`` joins a frozen-features checkpoint to that backbone on image data (default: the
    recorded one). The result's ``fit`` records say, per kind and split, how the probes were fitted.
    """
    for kind in kinds:
        if kind not in PROBE_KINDS:
            raise ProbeError(f"unknown probe {kind!r}; choose from {', '.join(PROBE_KINDS)}.")
    if fit_split == eval_split:
        raise ProbeError(f"--fit-split {fit_split} is the scored split: leave --fit-split out to cross-fit within it, or give another split.")
    model = load_for_data(checkpoint, data, eval_split, backbone)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    evals = {eval_split: split_features(model, data, eval_split, batch_size, device, need_bg=False)}
    if imagenet:
        evals["imagenet"] = split_features(model, imagenet, imagenet_split, batch_size, device, need_bg=False)
    fit_data = split_features(model, data, fit_split, batch_size, device) if fit_split else None
    rows = FitRows(split=fit_split, folds=folds, model_rows=model_rows(model), seed=seed)
    result = run_probes(evals, rows, fit_data, kinds=kinds, names=names, l2=l2, device=device, progress=True)
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
