"""Counterfactual scores: the same object on several backgrounds (``d3s generate --paired``).

A *group* is one object (photo, paste position and noise seed) dreamed on several backgrounds, so
within a group only the background changes. From a model's top-1 answers:

- **consistency**: the share of groups whose top-1 is the same on every background the group is seen on;
- **all-backgrounds accuracy**: the share of groups whose top-1 is correct on every background (the
  counterfactual analogue of the Backgrounds Challenge's adversarial accuracy);
- **flip rate** of a background: the share of the images on that background whose top-1 differs from
  their group's majority answer.

The majority answer of a group is its most frequent top-1. When several answers are equally frequent
(a tie; e.g. two backgrounds, two answers), the true class wins if it is among them, otherwise the
smallest (lowest class index, or first name in sort order): so on a tie, an image flips when it leaves the
correct answer. Ties are counted (``tied_groups``). Only groups seen on at least two backgrounds count.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Hashable, Sequence

import numpy as np


def majority_answer(answers: Sequence[Hashable], truth: Hashable | None = None) -> tuple[Hashable, bool]:
    """``(majority answer, tied)`` under the rule of the module docstring."""
    counts = Counter(answers)
    top = max(counts.values())
    tied = sorted(a for a, n in counts.items() if n == top)
    if len(tied) == 1:
        return tied[0], False
    return (truth if truth in tied else tied[0]), True


def flips(answers: Sequence[Hashable], truth: Hashable | None = None) -> list[bool]:
    """For each answer of one group, whether it differs from the group's majority answer."""
    majority, _ = majority_answer(answers, truth)
    return [a != majority for a in answers]


def counterfactual_scores(top1: np.ndarray, fg: np.ndarray, bg: np.ndarray, group: np.ndarray,
                          bg_names: Sequence[str]) -> dict | None:
    """Consistency, all-backgrounds accuracy and per-background flip rates of one model's ``top1`` answers.

    Arrays are per image: answer, true class, background index, group id. Returns ``None`` when no group
    is seen on two or more backgrounds (e.g. an unpaired split). Rates are fractions in [0, 1].
    """
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group.tolist()):
        members[g].append(i)
    groups = [np.asarray(idx) for idx in members.values() if len(set(bg[idx].tolist())) >= 2]
    if not groups:
        return None
    consistent = all_correct = tied = 0
    seen: Counter = Counter()
    flipped: Counter = Counter()
    for idx in groups:
        answers = top1[idx].tolist()
        consistent += len(set(answers)) == 1
        all_correct += bool((top1[idx] == fg[idx]).all())
        majority, tie = majority_answer(answers, int(fg[idx[0]]))
        tied += tie
        for b, a in zip(bg[idx].tolist(), answers):
            seen[b] += 1
            flipped[b] += a != majority
    per_bg = {bg_names[b]: {"n": seen[b], "flips": flipped[b], "flip_rate": flipped[b] / seen[b]} for b in sorted(seen)}
    rates = {k: v["flip_rate"] for k, v in per_bg.items()}
    most = max(rates, key=rates.get) if len(set(rates.values())) > 1 else None
    return {
        "groups": len(groups),
        "images": int(sum(len(idx) for idx in groups)),
        "consistency": consistent / len(groups),
        "all_backgrounds_top1": all_correct / len(groups),
        "tied_groups": tied,
        "per_background": per_bg,
        "most_flips_background": most,
    }
