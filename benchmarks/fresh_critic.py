"""What a fresh critic finds in a trained extractor's z: the measurement behind the critics' whitened view.

Fits a new critic ``D(z, l)`` (the method's own ``Critic``, gradient penalty, Adam as in training) on the
fixed train-split z_fg of a checkpoint against the bg labels (or z_bg against fg with ``--side bg``), and
prints its gap on the validation split, which it never saw, for two views of z: batch-standardised
(``standardize``) and whitened (standardised, then a whitening map of the train split's correlation,
shrunk 10% towards the identity, as ``critic_view="whiten"`` does in training). Run it on a run and on
its ``--critic-weight 0`` ablation: the ratio of their gaps, view by view, says how much of the
dependence each view lets a critic see (compare with the probes' cross-leakage ratio).

    python benchmarks/fresh_critic.py --data out/ftoy --checkpoint out/wd --steps 1000
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's d3s, not an installed one

from d3s.algorithms import Critic, standardize, whitening_map
from d3s.probes import load_for_data, split_features


def whitener(z: torch.Tensor, shrinkage: float = 0.1):
    """The training view ``critic_view="whiten"``, with the map made from the whole of ``z``."""
    v = standardize(z)
    m = whitening_map(v.T @ v / len(v), shrinkage)
    return lambda batch: standardize(batch) @ m


def held_out_gaps(train, val, view, labels: int, steps: int, batch: int, seed: int, report: list[int]) -> dict[int, float]:
    z, l = train
    zv, lv = val
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    critic = Critic(z.shape[1], labels)
    opt = torch.optim.Adam(critic.parameters(), lr=2e-3, betas=(0.0, 0.9))
    out = {}
    for step in range(1, steps + 1):
        rows = torch.randint(len(z), (batch,), generator=g)
        v = view(z[rows])
        loss = -critic.gap(v, l[rows]) + 10 * critic.gradient_penalty(v, l[rows], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in report:
            with torch.no_grad():
                out[step] = float(np.mean([critic.gap(view(zv[s:s + batch]), lv[s:s + batch]).item()
                                           for s in range(0, len(zv) - batch + 1, batch)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, metavar="DIR")
    ap.add_argument("--checkpoint", required=True, metavar="CKPT")
    ap.add_argument("--side", choices=("fg", "bg"), default="fg", help="fg: D_fg(z_fg, l_bg); bg: D_bg(z_bg, l_fg)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    zkey, lkey = ("z_fg", "bg") if args.side == "fg" else ("z_bg", "fg")
    model = load_for_data(args.checkpoint, args.data)
    splits = {}
    for split in ("train", "validation"):
        feats = split_features(model, args.data, split)
        splits[split] = (feats[zkey].float(), feats[lkey].long())
    labels = len(model.bg_names if args.side == "fg" else model.fg_names)
    report = sorted({min(args.steps, s) for s in (100, 300, args.steps)})
    for name, view in (("standardised", standardize), ("whitened", whitener(splits["train"][0]))):
        gaps = held_out_gaps(splits["train"], splits["validation"], view, labels, args.steps, args.batch_size, args.seed, report)
        print(f"{name:13s} " + "  ".join(f"step {s}: held-out gap {g:.3f}" for s, g in gaps.items()))


if __name__ == "__main__":
    main()
