"""The critics' dependence estimate: exact shuffle mean, gradient penalty, and the gap the model sees.

The model's gap must measure dependence between z and the labels, not a critic's fit to the points
it was trained on. These tests run the Wasserstein method's own critic code at ResNet-50's sizes
(z_fg 1798 vs 10 backgrounds, z_bg 250 vs 1000 classes), with z and the labels independent or not.
"""

import itertools
import math

import pytest
import torch
from torch import nn

from conftest import feature_stub
from d3s.algorithms import Critic, HparamError, WassersteinDisentanglement, hparams_for, standardize


def test_gap_equals_the_mean_over_every_shuffle():
    torch.manual_seed(0)
    critic = Critic(4, 3, depth=2)
    z, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 2, 2, 2])
    with torch.no_grad():
        scores = critic(z)
        joint = scores.gather(1, labels[:, None]).mean()
        shuffles = [scores[torch.arange(6), labels[list(p)]].mean() for p in itertools.permutations(range(6))]
        expected = joint - torch.stack(shuffles).mean()
        assert critic.gap(z, labels).item() == pytest.approx(expected.item(), abs=1e-6)


def test_interpolation_weight_is_one_per_sample():
    """Each interpolated point lies on the segment between its joint sample and one other sample
    (one weight for all of a point's coordinates), and its label comes from one end or the other."""
    g = torch.Generator().manual_seed(0)
    z, labels = torch.randn(32, 50, generator=g), torch.randint(0, 5, (32,), generator=g)
    z_mix, l_mix = Critic.interpolate(z, labels, g)
    for i in range(32):
        on_segment = []
        for j in range(32):
            d = z[i] - z[j]
            if j == i or d.abs().min() < 1e-3:
                continue
            ratio = (z_mix[i] - z[j]) / d
            if ratio.std() < 1e-4:  # one scalar weight for every coordinate
                on_segment.append(j)
                assert -1e-5 <= ratio.mean() <= 1 + 1e-5
        assert on_segment or torch.allclose(z_mix[i], z[i]), i
    assert set(l_mix.tolist()) <= set(labels.tolist())


def test_gradient_penalty_is_on_z_only():
    """With D(z, l) = w.z + b_l the gradient in z is w for every label: the penalty is exactly
    (|w| - 1)^2, whatever the labels. A penalty through the label would add the b_l differences."""
    g = torch.Generator().manual_seed(0)
    critic = Critic(8, 4, depth=1)
    layer = critic.net[0]
    with torch.no_grad():
        layer.weight.copy_(torch.full((4, 8), 0.5))  # every label's row: norm 0.5 * sqrt(8)
        layer.bias.copy_(torch.tensor([0.0, 10.0, -7.0, 3.0]))
    z, labels = torch.randn(64, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    gp = critic.gradient_penalty(z, labels, g)
    assert gp.item() == pytest.approx((0.5 * math.sqrt(8) - 1) ** 2, rel=1e-5)
    gp.backward()  # the penalty trains the critic
    assert layer.weight.grad.abs().sum() > 0


def test_penalty_is_symmetric_huber_by_default_and_abs_on_request():
    gaps = torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0])
    huber = WassersteinDisentanglement(feature_stub(4, 4, 2, 2), hparams_for("wasserstein"))
    # quadratic below delta = 1, linear beyond, the same for a gap and its negative
    assert huber.penalty(gaps).tolist() == pytest.approx([2.5, 0.125, 0.0, 0.125, 2.5])
    absolute = WassersteinDisentanglement(feature_stub(4, 4, 2, 2), hparams_for("wasserstein", {"critic_penalty": "abs"}))
    assert absolute.penalty(gaps).tolist() == pytest.approx([3.0, 0.5, 0.0, 0.5, 3.0])
    with pytest.raises(HparamError, match="huber, abs"):
        hparams_for("wasserstein", {"critic_penalty": "square"})


def test_whitened_view_decorrelates_from_earlier_batches_only():
    """The "whiten" view: standardised z times a map made from the running correlation of batches already
    seen (shrunk towards the identity, here not at all). On strongly correlated features it gives a
    covariance near the identity; the batch being scored never enters the map."""
    g = torch.Generator().manual_seed(0)
    method = WassersteinDisentanglement(feature_stub(6, 4, 2, 2), hparams_for("wasserstein", {"whiten_momentum": 0.1, "whiten_shrinkage": 0.0}))
    mix = torch.randn(6, 6, generator=g)
    draw = lambda n: torch.randn(n, 6, generator=g) @ mix  # noqa: E731
    first = draw(64)
    assert torch.equal(method.view(first, "fg"), standardize(first))  # nothing seen yet: standardised only
    for _ in range(60):
        method.track_correlation(draw(256), torch.randn(256, 4, generator=g), torch.zeros(256, dtype=torch.long))
    whitener = method._whitener["fg"].clone()
    big = draw(20000)
    before, after = torch.corrcoef(standardize(big).T), torch.cov(method.view(big, "fg").T)
    off = ~torch.eye(6, dtype=torch.bool)
    assert before[off].abs().max() > 0.5  # the features are strongly correlated
    assert after[off].abs().max() < 0.1 and (after.diagonal() - 1).abs().max() < 0.1
    method.view(draw(64), "fg")
    assert torch.equal(method._whitener["fg"], whitener)  # viewing a batch does not change the map
    with pytest.raises(HparamError, match="standardize, whiten"):
        hparams_for("wasserstein", {"critic_view": "pca"})


def _model_gaps(dim: int, labels: int, shift: float, steps: int, seed: int = 0, batch: int = 64):
    """Gaps the model step sees, step by step, for z (``dim``) against ``labels`` classes (the fg critic
    D_fg(z_fg, l_bg) at these sizes; the bg critic is given 4 dimensions and 2 labels, out of the way);
    and at the end the old estimate: the critic refitted on a memory that holds the last batch, scored on
    it. ``shift`` plants dependence: each label moves z by ``shift`` along its own random direction."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    method = WassersteinDisentanglement(feature_stub(dim, 4, 2, labels), hparams_for("wasserstein"))
    direction = nn.functional.normalize(torch.randn(labels, dim, generator=g), dim=1)
    held_out = []
    for _ in range(steps):
        fg, bg = torch.randint(0, 2, (batch,), generator=g), torch.randint(0, labels, (batch,), generator=g)
        z_fg, z_bg = torch.randn(batch, dim, generator=g) + shift * direction[bg], torch.randn(batch, 4, generator=g)
        method.critic_update(batch, g)
        with torch.no_grad():
            held_out.append(method.gaps(z_fg, z_bg, fg, bg)[0])
        method.remember(z_fg, z_bg, fg, bg)
        method.track_correlation(z_fg, z_bg, bg)  # the whitening map, too, is made from seen batches only
    method.hparams["critic_memory"] = 1  # only the last batch: fit on it, score it
    method.remember(z_fg, z_bg, fg, bg)
    method.critic_update(batch, g)
    with torch.no_grad():
        refit = method.gaps(z_fg, z_bg, fg, bg)[0]
    return torch.stack(held_out), refit


@pytest.mark.slow
@pytest.mark.parametrize("dim, labels, steps, shift", [(1798, 10, 16, 3.0), (250, 1000, 60, 6.0)],
                         ids=["z_fg-1798-vs-10-bg", "z_bg-250-vs-1000-fg"])
def test_model_gap_is_unbiased_at_paper_sizes(dim, labels, steps, shift):
    """Independent z and labels: the gap the model sees has mean 0 within 4 standard errors. The critic
    never saw the batch it scores, so each step's gap has expectation exactly 0 given the past (the
    steps' gaps are martingale differences, and their mean's standard error is the usual one); 4
    standard errors leave a false alarm rate under 1e-4. With planted dependence (each label moves z along
    its own direction, by 3 standard deviations for 10 labels, by 6 for 1000 labels, each of which the
    critic has seen about once in 60 steps) the gap is clearly positive. Scored on a batch it
    was fitted on, the same critic shows a large gap without any dependence: the estimate the model
    used to follow."""
    burn_in = 4
    held, refit = _model_gaps(dim, labels, 0.0, steps)
    held = held[burn_in:]
    se = held.std() / math.sqrt(len(held))
    assert abs(held.mean()) <= 4 * se, (held.mean().item(), se.item())
    assert refit > 10 * se, (refit.item(), se.item())
    dep = _model_gaps(dim, labels, shift, steps, seed=1)[0][burn_in:]
    assert dep.mean() > 10 * se and dep.mean() > 6 * dep.std() / math.sqrt(len(dep)), (dep.mean().item(), se.item())


@pytest.mark.parametrize("method", ["wasserstein", "adversarial"])
def test_label_smoothing_reaches_both_cross_entropies_and_is_range_checked(method):
    """``label_smoothing`` is what the logged (and paid) fg and bg cross-entropies are computed with: on a batch the
    heads already classify with margin m over K classes, eps = 0.1 costs about eps x m x (K - 1) / K per cross-entropy,
    against about 0 for eps = 0."""
    from d3s.algorithms import METHODS
    from d3s.models import FeatureDisentangler

    def first_step(smoothing):
        torch.manual_seed(0)
        model = FeatureDisentangler(12, [f"c{i}" for i in range(4)], [f"b{i}" for i in range(3)], fg_dim=8, bg_dim=4, neck="linear")
        with torch.no_grad():  # heads that read the labels planted below with margin 20
            model.fg_head.weight.copy_(torch.eye(4, 8) * 20)
            model.bg_head.weight.copy_(torch.eye(3, 4) * 20)
        fg, bg = torch.arange(32) % 4, torch.arange(32) % 3
        x = torch.zeros(32, 12)
        x[torch.arange(32), fg] = 1.0
        x[torch.arange(32), 8 + bg] = 1.0
        algo = METHODS[method](model, hparams_for(method, {"label_smoothing": smoothing}))
        return algo.update(x, fg, bg, torch.Generator().manual_seed(0))

    plain, smoothed = first_step(0.0), first_step(0.1)
    assert plain["ce_fg"] < 1e-3 and plain["ce_bg"] < 1e-3
    assert smoothed["ce_fg"] > 0.1 * 20 * 3 / 4 * 0.9 and smoothed["ce_bg"] > 0.1 * 20 * 2 / 3 * 0.9
    for bad in (1.0, -0.1):
        with pytest.raises(HparamError, match="label_smoothing"):
            hparams_for(method, {"label_smoothing": bad})
