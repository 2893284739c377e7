"""Training methods on one interface, DomainBed style: Wasserstein disentanglement, ERM, GroupDRO, IRM, and an
adversarial (DANN-style) disentanglement beside Wasserstein (:class:`AdversarialDisentanglement`).

Every method is built from ``(model, hparams)``, owns its optimizers, and has
``update(images, fg, bg, generator) -> dict of floats``. ``bg == -1`` marks rows without a
background label (ImageNet images mixed into the batch): they only enter the terms that need no
bg label. The defaults of each method are in :data:`HPARAMS`; ``d3s train --hparams`` overrides.

Wasserstein disentanglement (paper, eq. 9-10), as done here:

- Critics ``D_fg(z_fg, l_bg)`` and ``D_bg(z_bg, l_fg)`` are per-label score MLPs, ``D(z, l) = f(z)[l]``
  (LeakyReLU 0.1, widths halving). The label selects an output; it is not an input, so the
  gradient penalty is taken with respect to z only (measured in this project's first prototype, a 5 x 5
  shapes-on-textures toy: a penalty through an interpolated one-hot label crippled this critic, whose gradient
  with respect to the label is its own score vector, and a critic on ``[z, one-hot]`` removed nothing).
- The critics see **batch-standardised, whitened** features. A Wasserstein critic measures distances, so
  information kept at a small scale costs it little while a probe still reads it; standardising removes
  that hiding place (and the trivial escape of shrinking z), and whitening (a fixed map from the running
  correlation of earlier batches) removes the next one: a label kept along a direction of little
  variance among strongly correlated features, which a probe weighs against the spread around it
  (see ``view``).
- **Held-out gaps.** The critics are fitted on minibatches drawn from a memory of the detached
  features of the 8 *earlier* batches; the gap that drives the model is taken on the current batch,
  which they have not seen (it joins the memory after the model step). A critic scored on the points
  it was fitted on finds a gap even when z and the labels are independent, and at ResNet-50's sizes
  (1798 features against 10 labels, 250 against 1000) that fit is most of the gap; on an unseen batch
  the gap's expectation under independence is exactly 0 (tests/test_critics.py checks both sizes).
- The model pays a **Huber** penalty of each gap (``critic_penalty``): quadratic below 1, linear
  beyond. The critic class is symmetric, so a negative gap is dependence too; a held-out gap is noisy
  around 0 when little is left, and |gap| would push the encoder as hard on that noise as on a real
  gap, at a cost in fg accuracy (README toy, seed 0, 2500 steps, standardised views: fg 0.960 with Huber,
  0.934 with |gap|).
- The product of marginals is every shuffle of the labels within the batch at once:
  ``E_prod = mean_i mean_j f(z_i)[l_j]``, the expectation of the one-shuffle estimate, with less noise.
- The gradient penalty interpolates between a joint and a product sample with a weight drawn per
  sample (the authors' code drew it per element).
- Two time-scales: the critics' learning rate (2e-3) is twice the model's, so they keep up with the
  encoder they chase (toy, weight 2, 1500 steps: cross-leakage 0.196 against 0.266 with equal rates,
  mostly less shape left in z_bg).
- After the cross-entropy warm-up the critic weight ramps up linearly (to 2.5 over 500 steps): a
  strong pull from the first step costs fg accuracy (weight 2 at once: fg 0.894 at 1500 steps), a
  ramped one keeps it (see the README's numbers).
- The model's learning rate decays to 0 on a cosine (``lr_schedule``, all methods alike). The critic
  game cycles: a critic finds where a label hides, the encoder moves it, the critic follows. With a
  constant rate a run stops wherever the cycle is (toy, 2500 steps: cross-leakage 0.28 and 0.18 for
  seeds 0 and 1); as the encoder slows down, the critics, whose rate stays constant, finish the job
  (README toy, three seeds: linear-probe cross-leakage 0.06-0.07, against 0.44-0.47 without critics; the
  README has the table).
- Critic steps run on detached features: they never back-propagate through the backbone, so a
  Wasserstein step costs about one ERM step plus a few small MLP steps.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .choices import LR_SCHEDULES  # noqa: F401 (re-exported: the choices live in d3s.choices)

CRITIC_PENALTIES = ("huber", "abs")
CRITIC_VIEWS = ("standardize", "whiten")
ADVERSARY_OBJECTIVES = ("information", "reversal", "confusion")
COMMON = {
    "lr": 1e-3,
    "weight_decay": 0.0,
    "lr_schedule": "cosine",  # the model's learning rate over the run: "cosine" (to 0 at the last step) or "constant"
}
HPARAMS: dict[str, dict[str, Any]] = {
    # fg cross-entropy only: the paper's baseline
    "erm": {**COMMON},
    # eq. 9-10; betas (0, 0.9) as the paper
    "wasserstein": {
        **COMMON,
        "betas": (0.0, 0.9),
        "alpha": 1.0,  # weight of the two cross-entropies
        "label_smoothing": 0.0,  # of the two cross-entropies: > 0 keeps their gradient alive once train rows are memorised
        "weight_decay": 1e-4,  # Adam's L2 on the model: chosen on the disentanglement grid (docs/disentanglement.md)
        "critic_weight": 2.5,  # weight of the two critic gaps in the model loss; 0 = no disentanglement
        "critic_lr": 2e-3,  # two time-scales: the critics learn twice as fast as the model
        "critic_steps": 5,  # critic updates per model update (on the same detached features)
        "gp_weight": 10.0,  # gradient penalty (WGAN-GP)
        "critic_depth": 3,  # linear layers per critic, widths halving
        "critic_width": 512,  # widest hidden layer (ResNet-50's 1798-d z_fg: 1798 -> 512 -> 256 -> labels)
        "critic_min_width": 16,  # narrowest hidden layer
        "warmup_iters": 200,  # cross-entropy only for the first iterations (critics already learn)
        "critic_ramp_iters": 500,  # after the warm-up, the critic weight grows linearly over this many iterations
        "critic_scale": "none",  # "dim": critics see standardised z / sqrt(2 dim) (gaps comparable across sizes of z)
        "critic_penalty": "huber",  # what the model pays for a gap g: "huber" (g^2 / 2 below delta, then linear) or "abs" (|g|)
        "critic_huber_delta": 1.0,  # where the Huber penalty turns linear
        "critic_memory": 8,  # critic steps draw minibatches from the detached features of this many earlier batches
        "critic_view": "whiten",  # what critics see: "standardize" (per feature) or "whiten" (then decorrelated, see `view`)
        "whiten_momentum": 0.02,  # running correlation of earlier batches (about 1 / momentum batches)
        "whiten_shrinkage": 0.1,  # the correlation is shrunk this far towards the identity before whitening
        "whiten_every": 20,  # steps between recomputations of the whitening map
    },
    # fg cross-entropy, worst bg group up-weighted (Sagawa et al.)
    "groupdro": {**COMMON, "groupdro_eta": 0.01},
    # fg cross-entropy + IRMv1 penalty across bg environments (Arjovsky et al.)
    "irm": {**COMMON, "irm_lambda": 100.0, "irm_penalty_anneal_iters": 200},
    # DANN / CDANN style: classifiers of the other label as adversaries (see AdversarialDisentanglement). The
    # keys shared with "wasserstein" mean the same, so --critic-weight, --critic-steps, --warmup and --critic-ramp apply
    "adversarial": {
        **COMMON,
        "alpha": 1.0,  # weight of the two cross-entropies
        "label_smoothing": 0.0,  # as "wasserstein"
        "critic_weight": 1.0,  # weight of the adversaries' held-out information (nats) in the model loss; 0 = no disentanglement
        "critic_lr": 5e-3,  # Adam, above the critics' rate: an adversary lagging behind the encoder reads little
        "critic_steps": 5,  # adversary updates per model update (on the same detached features)
        "critic_depth": 2,  # linear layers per adversary: 1 = logistic regression (the linear probe), 2 = one hidden layer
        "critic_width": 512,  # widest hidden layer, widths halving as the critics'
        "critic_min_width": 16,  # narrowest hidden layer
        "warmup_iters": 200,  # cross-entropy only for the first iterations (the adversaries already learn)
        "critic_ramp_iters": 500,  # after the warm-up, the adversaries' weight grows linearly over this many iterations
        "critic_memory": 8,  # adversary steps draw minibatches from the detached features of this many earlier batches
        "critic_view": "whiten",  # what the adversaries see: "standardize" (per feature) or "whiten" (as the critics)
        "whiten_momentum": 0.02,  # running correlation of earlier batches (about 1 / momentum batches)
        "whiten_shrinkage": 0.1,  # the correlation is shrunk this far towards the identity before whitening
        "whiten_every": 20,  # steps between recomputations of the whitening map
        "adversary_mixture": 0.5,  # m: the prediction paid for is (1 - m) q + m marginal; a confidently wrong row costs <= log(1 / m)
        # what the encoder pays: "information" max(CE(l, marginal) - CE(l, q), 0); "reversal" -CE (DANN, unbounded);
        # "confusion" KL(marginal || q), label-free (the last two for comparison)
        "adversary_objective": "information",
    },
}


class HparamError(ValueError):
    """An unknown method or hyper-parameter."""


def _like(name: str, default: Any, value: Any) -> Any:
    """``value`` (from JSON) as the type of ``default``, element by element for tuples: JSON has no tuples and
    writes ``0`` for ``0.0``, so ``{"betas": [0, 0.9]}`` becomes ``(0.0, 0.9)``, as Adam needs."""
    try:
        if isinstance(default, tuple):
            if not isinstance(value, (list, tuple)) or len(value) != len(default):
                raise TypeError
            return tuple(_like(name, d, v) for d, v in zip(default, value))
        if isinstance(default, bool) or isinstance(value, (list, tuple, dict)):
            if type(value) is not type(default):
                raise TypeError
            return value
        if isinstance(default, int) and float(value) != int(value):
            raise TypeError  # 5.5 critic steps: refuse rather than truncate
        return type(default)(value)
    except (TypeError, ValueError):
        raise HparamError(f"hyper-parameter {name!r} must be like its default {default!r}, got {value!r}.") from None


def hparams_for(method: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    if method not in HPARAMS:
        raise HparamError(f"unknown --method {method!r}; choose from {', '.join(HPARAMS)}.")
    hp = copy.deepcopy(HPARAMS[method])
    for k, v in (overrides or {}).items():
        if k not in hp:
            raise HparamError(f"--method {method} has no hyper-parameter {k!r}; it has {', '.join(hp)}.")
        hp[k] = _like(k, hp[k], v)
    if hp["lr_schedule"] not in LR_SCHEDULES:
        raise HparamError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {hp['lr_schedule']!r}.")
    if "critic_penalty" in hp and hp["critic_penalty"] not in CRITIC_PENALTIES:
        raise HparamError(f"critic_penalty must be one of {', '.join(CRITIC_PENALTIES)}; got {hp['critic_penalty']!r}.")
    if "critic_view" in hp and hp["critic_view"] not in CRITIC_VIEWS:
        raise HparamError(f"critic_view must be one of {', '.join(CRITIC_VIEWS)}; got {hp['critic_view']!r}.")
    if "label_smoothing" in hp and not 0.0 <= hp["label_smoothing"] < 1.0:
        raise HparamError(f"label_smoothing must be in [0, 1); got {hp['label_smoothing']!r}.")
    if "adversary_mixture" in hp and not 0.0 <= hp["adversary_mixture"] <= 1.0:
        raise HparamError(f"adversary_mixture must be in [0, 1]; got {hp['adversary_mixture']!r}.")
    if "adversary_objective" in hp and hp["adversary_objective"] not in ADVERSARY_OBJECTIVES:
        raise HparamError(f"adversary_objective must be one of {', '.join(ADVERSARY_OBJECTIVES)}; got {hp['adversary_objective']!r}.")
    return hp


class Algorithm(nn.Module):
    """Common interface. ``self.model`` is the :class:`~d3s.models.DisentangledExtractor`."""

    trains_bg_head = False  # whether the loss reaches the bg head (else DDP must allow unused parameters)

    def __init__(self, model: nn.Module, hparams: dict[str, Any]):
        super().__init__()
        self.model, self.hparams = model, hparams
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # checkpointed with the weights
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hparams["lr"], betas=hparams.get("betas", (0.9, 0.999)),
                                          weight_decay=hparams["weight_decay"])
        self.accelerator = None

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def set_progress(self, done: float) -> None:
        """Set the model's learning rate for a run that is ``done`` (0 to 1) through its iterations.

        A function of the step alone, so a resumed run follows the same schedule.
        """
        factor = 0.5 * (1 + math.cos(math.pi * done)) if self.hparams["lr_schedule"] == "cosine" else 1.0
        for group in self.optimizer.param_groups:
            group["lr"] = self.hparams["lr"] * factor

    def prepare(self, accelerator) -> None:
        """Hand the model and its optimizer to ``accelerate`` (DDP, mixed precision)."""
        self.accelerator = accelerator
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)

    @property
    def core(self) -> nn.Module:
        """The extractor itself (unwrapped from DDP)."""
        return self.accelerator.unwrap_model(self.model) if self.accelerator else self.model

    def _backward(self, loss: torch.Tensor) -> None:
        if self.accelerator is not None:
            self.accelerator.backward(loss)
        else:
            loss.backward()

    def _model_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._backward(loss)
        self.optimizer.step()

    def forward_heads(self, images: torch.Tensor):
        z, fg_logits, bg_logits = self.model(images, with_heads=True)
        return z, fg_logits.float(), bg_logits.float()

    def update(self, images, fg, bg, generator: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_heads(images)[1]


class ERM(Algorithm):
    """Cross-entropy of the fg head on z_fg, nothing else."""

    def update(self, images, fg, bg, generator):
        _, fg_logits, _ = self.forward_heads(images)
        loss = F.cross_entropy(fg_logits, fg)
        self._model_step(loss)
        self.step += 1
        return {"loss": loss.item(), "ce_fg": loss.item()}


class GroupDRO(ERM):
    """fg cross-entropy with the bg classes as groups; the worst groups weigh most (Sagawa et al. 2020)."""

    def __init__(self, model, hparams):
        super().__init__(model, hparams)
        self.register_buffer("q", torch.ones(len(model.bg_names)) / len(model.bg_names))

    def update(self, images, fg, bg, generator):
        _, fg_logits, _ = self.forward_heads(images)
        per_row = F.cross_entropy(fg_logits, fg, reduction="none")
        labelled = bg >= 0
        group_loss = torch.zeros_like(self.q)
        count = torch.zeros_like(self.q)
        group_loss.index_add_(0, bg[labelled], per_row[labelled])
        count.index_add_(0, bg[labelled], torch.ones_like(per_row[labelled]))
        present = count > 0
        group_loss = torch.where(present, group_loss / count.clamp(min=1), torch.zeros_like(group_loss))
        with torch.no_grad():
            self.q *= torch.exp(self.hparams["groupdro_eta"] * group_loss.detach() * present)
            self.q /= self.q.sum()
        loss = (self.q * group_loss).sum()
        if (~labelled).any():  # fg-only rows have no group: plain cross-entropy
            loss = loss + per_row[~labelled].mean()
        self._model_step(loss)
        self.step += 1
        return {"loss": loss.item(), "ce_fg": per_row.mean().item(), "worst_group": group_loss.max().item()}


class IRM(ERM):
    """fg cross-entropy + IRMv1 penalty, bg classes as environments (Arjovsky et al. 2019)."""

    def update(self, images, fg, bg, generator):
        _, fg_logits, _ = self.forward_heads(images)
        ce = F.cross_entropy(fg_logits, fg)
        penalty = fg_logits.new_zeros(())
        envs = [e for e in bg.unique().tolist() if e >= 0]
        for e in envs:
            rows = bg == e
            scale = torch.ones((), device=fg_logits.device, requires_grad=True)
            logits = fg_logits[rows] * scale
            # unbiased estimate: product of the gradients on two halves of the environment
            g1 = torch.autograd.grad(F.cross_entropy(logits[::2], fg[rows][::2]), scale, create_graph=True)[0]
            g2 = torch.autograd.grad(F.cross_entropy(logits[1::2], fg[rows][1::2]), scale, create_graph=True)[0] if rows.sum() > 1 else g1
            penalty = penalty + g1 * g2
        penalty = penalty / max(1, len(envs))
        weight = self.hparams["irm_lambda"] if int(self.step) >= self.hparams["irm_penalty_anneal_iters"] else 1.0
        loss = ce + weight * penalty
        if weight > 1.0:
            loss = loss / weight  # keep the gradient scale comparable after the penalty switches on
        if int(self.step) == self.hparams["irm_penalty_anneal_iters"]:
            # as in DomainBed: reset Adam's moments when the penalty weight jumps
            self.optimizer.state.clear()
        self._model_step(loss)
        self.step += 1
        return {"loss": loss.item(), "ce_fg": ce.item(), "irm_penalty": penalty.item()}


# --- Wasserstein disentanglement ------------------------------------------------------------------

def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-feature batch standardisation, gradients flowing through the statistics."""
    return (z - z.mean(0, keepdim=True)) / (z.var(0, unbiased=False, keepdim=True) + eps).sqrt()


def whitening_map(correlation: torch.Tensor, shrinkage: float) -> torch.Tensor:
    """``M = L^-T`` for ``(1 - s) R + s I = L L^T``, so that ``M^T ((1 - s) R + s I) M = I``: rows ``v`` of
    standardised features with correlation ``R`` have ``v M`` decorrelated (fully when ``s = 0``)."""
    eye = torch.eye(len(correlation), device=correlation.device)
    chol = torch.linalg.cholesky(torch.lerp(correlation, eye, shrinkage).double())
    return torch.linalg.solve_triangular(chol, eye.double(), upper=False).T.float()


class Critic(nn.Module):
    """Per-label score critic ``D(z, l) = f(z)[l]``: an MLP, LeakyReLU(0.1), widths halving, between
    ``min_width`` and ``max_width``."""

    def __init__(self, dim: int, num_labels: int, depth: int = 3, max_width: int = 512, min_width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth - 1):
            nxt = max(min_width, min(max_width, width // 2))
            layers += [nn.Linear(width, nxt), nn.LeakyReLU(0.1)]
            width = nxt
        layers.append(nn.Linear(width, num_labels))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def gap(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """E_joint D(z, l) - E_prod D(z, l): the dual estimate of W(P_zl, P_z P_l) (eq. 8).

        The product term averages over all shuffles of the labels in the batch, exactly.
        """
        scores = self(z)
        joint = scores.gather(1, labels[:, None]).mean()
        marginal = torch.bincount(labels, minlength=scores.shape[1]).to(scores.dtype) / len(labels)
        product = (scores @ marginal).mean()
        return joint - product

    @staticmethod
    def interpolate(z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Points on the segments between joint samples ``(z_i, l_i)`` and product samples ``(z_j, l_k)``.

        One weight per sample (the authors' code drew one per element, which leaves the segment). The
        label is not interpolated: it is carried over from one end or the other, with the probability
        given by the same weight.
        """
        n = len(z)
        dev = z.device
        other = torch.randperm(n, generator=generator, device=dev)  # the product sample's z
        shuffled = torch.randperm(n, generator=generator, device=dev)  # the product sample's label
        eps = torch.rand(n, 1, generator=generator, device=dev)
        z_mix = eps * z + (1 - eps) * z[other]
        take_joint = torch.rand(n, generator=generator, device=dev) < eps[:, 0]
        return z_mix, torch.where(take_joint, labels, labels[shuffled])

    def gradient_penalty(self, z: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """WGAN-GP, ``mean (|grad_z D(z, l)| - 1)^2`` on :meth:`interpolate`'s points: on z only, the label
        selects the critic's output (a penalty through the label cripples this critic: see the module docstring)."""
        z_mix, l_mix = self.interpolate(z, labels, generator)
        z_mix = z_mix.detach().requires_grad_(True)  # the penalty trains the critic; z is data here
        score = self(z_mix).gather(1, l_mix[:, None]).sum()
        (grad,) = torch.autograd.grad(score, z_mix, create_graph=True)
        return ((grad.norm(dim=1) - 1) ** 2).mean()


class Disentanglement(Algorithm):
    """What the two disentangling methods share: two networks that read the other label, ``critic_fg`` (bg
    from z_fg) and ``critic_bg`` (fg from z_bg), fitted on detached features of *earlier* batches and scored
    on the current one; the view of z they see; the warm-up and ramp of their weight; and the model step

        loss = alpha (CE_fg + CE_bg) + critic_weight * ramp(step) * (penalty(d_fg) + penalty(d_bg))

    where ``d_fg``, ``d_bg`` are the dependence estimates of a subclass (:meth:`dependence`: Wasserstein gaps,
    or an adversary's information). A subclass builds the two networks and :attr:`critic_optimizer`, and
    defines :meth:`dependence`, :meth:`penalty` and :meth:`critic_loss`.
    """

    trains_bg_head = True
    logged = "gap"  # log keys of the dependence estimates: f"{logged}_fg", f"{logged}_bg"

    def __init__(self, model, hparams):
        super().__init__(model, hparams)
        self._memory: list[tuple[torch.Tensor, ...]] = []  # earlier batches' (z_fg, z_bg, fg, bg), detached
        # running correlation of earlier batches' standardised z, and the whitening map made from it ("whiten" view)
        self._correlation: dict[str, torch.Tensor] = {}
        self._whitener: dict[str, torch.Tensor] = {}

    def _critic_optimizer(self, betas) -> torch.optim.Optimizer:
        params = list(self.critic_fg.parameters()) + list(self.critic_bg.parameters())
        # fused: one kernel for all critic parameters (several steps per model step; 7x faster than the loop on a CPU)
        return torch.optim.Adam(params, lr=self.hparams["critic_lr"], betas=tuple(map(float, betas)), fused=True)

    def optimizers(self):
        return {"model": self.optimizer, "critic": self.critic_optimizer}

    def get_extra_state(self):
        # the critics' memory of earlier features is part of the state: a resumed run must see it
        return {"memory": [list(m) for m in self._memory], "correlation": self._correlation, "whitener": self._whitener}

    def set_extra_state(self, state) -> None:
        self._memory = [tuple(m) for m in state["memory"]]
        self._correlation, self._whitener = dict(state.get("correlation", {})), dict(state.get("whitener", {}))

    def prepare(self, accelerator) -> None:
        super().prepare(accelerator)
        # The critics stay unwrapped: DDP does not support the double backward of the gradient
        # penalty, and they are tiny. Their gradients are averaged across processes by hand.
        self.critic_fg.to(accelerator.device)
        self.critic_bg.to(accelerator.device)

    def view(self, z: torch.Tensor, side: str) -> torch.Tensor:
        """What a critic sees of z_fg or z_bg (``side``): batch-standardised z; with ``critic_view="whiten"`` then
        multiplied by a fixed whitening map of the running correlation of earlier batches (shrunk towards the
        identity); scaled by 1 / sqrt(2 dim) with ``critic_scale="dim"``.

        Why whiten: a linear probe weighs a direction by its signal against the spread around it (it whitens,
        in effect), while a Lipschitz critic on merely standardised z measures plain distances. Where z_fg is
        dominated by fg structure, a background kept in a direction of little variance is a small distance
        (cheap for the critic to miss) yet plain to a probe. Features toy, seed 0, the final z_fg of a run with
        standardised views: a fresh critic's held-out gap is 11% of the ablation's standardised, 57% whitened,
        while the linear probe reads 60% of the ablation's cross excess (``benchmarks/fresh_critic.py``).
        """
        v = standardize(z)
        if side in self._whitener:
            v = v @ self._whitener[side].to(v.dtype)
        return v / math.sqrt(2 * z.shape[1]) if self.hparams.get("critic_scale") == "dim" else v

    @torch.no_grad()
    def track_correlation(self, z_fg, z_bg, bg) -> None:
        """Fold a batch into the running correlations; every ``whiten_every`` steps, remake the whitening maps
        from them (:func:`whitening_map`)."""
        hp = self.hparams
        if hp["critic_view"] != "whiten":
            return
        for side, z in (("fg", z_fg[bg >= 0]), ("bg", z_bg)):
            if len(z) < 2:
                continue
            v = standardize(z.detach().float())
            batch = v.T @ v / len(v)
            if self.accelerator is not None and self.accelerator.num_processes > 1:
                batch = self.accelerator.reduce(batch, reduction="mean")  # every process whitens alike
            old = self._correlation.get(side)
            self._correlation[side] = batch if old is None else torch.lerp(old, batch, hp["whiten_momentum"])
        if int(self.step) % hp["whiten_every"] == 0:
            for side, r in self._correlation.items():
                self._whitener[side] = whitening_map(r, hp["whiten_shrinkage"])

    def ramp(self, step: int) -> float:
        """Share of the critic weight at ``step``: 0 in the warm-up, then a linear ramp to 1."""
        hp = self.hparams
        if step < hp["warmup_iters"]:
            return 0.0
        return min(1.0, (step - hp["warmup_iters"] + 1) / max(1, hp["critic_ramp_iters"]))

    def remember(self, z_fg, z_bg, fg, bg) -> None:
        """Add a batch to the critics' memory (detached), forgetting the oldest beyond ``critic_memory`` batches."""
        self._memory.append((z_fg.detach().float(), z_bg.detach().float(), fg, bg))
        self._memory = self._memory[-self.hparams["critic_memory"]:]

    def critic_update(self, batch_size: int, generator) -> dict[str, float]:
        """``critic_steps`` steps of :meth:`critic_loss`, each on a minibatch of ``batch_size`` rows drawn from
        the memory of earlier batches (viewed with :meth:`view`; rows without a bg label leave the fg side);
        nothing when the memory is empty (the first step)."""
        hp = self.hparams
        if not self._memory:
            return {}
        z_fg, z_bg, fg, bg = (torch.cat(parts) for parts in zip(*self._memory))
        out = {}
        for _ in range(hp["critic_steps"]):
            rows = torch.randperm(len(fg), generator=generator, device=fg.device)[:batch_size]
            labelled = bg[rows] >= 0
            v_fg, bg_labelled = self.view(z_fg[rows][labelled], "fg"), bg[rows][labelled]
            v_bg, fg_rows = self.view(z_bg[rows], "bg"), fg[rows]
            loss, out = self.critic_loss(v_fg, bg_labelled, v_bg, fg_rows, generator)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.accelerator is not None and self.accelerator.num_processes > 1:
                for p in list(self.critic_fg.parameters()) + list(self.critic_bg.parameters()):
                    if p.grad is not None:
                        p.grad = self.accelerator.reduce(p.grad, reduction="mean")
            self.critic_optimizer.step()
        return out

    def critic_loss(self, v_fg, bg_labelled, v_bg, fg_rows, generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one critic step on viewed features (``v_fg`` holds only rows with a bg label), and its logs."""
        raise NotImplementedError

    def dependence(self, z_fg, z_bg, fg, bg) -> tuple[torch.Tensor, torch.Tensor]:
        """The two estimates the model pays for, on the current batch (which the critics have not seen)."""
        raise NotImplementedError

    def penalty(self, estimate: torch.Tensor) -> torch.Tensor:
        """What the model pays for a dependence estimate."""
        raise NotImplementedError

    def update(self, images, fg, bg, generator):
        hp = self.hparams
        z, fg_logits, bg_logits = self.forward_heads(images)
        z_fg, z_bg = self.core.split(z.float())

        logs = self.critic_update(len(fg), generator)  # fitted on earlier batches only

        labelled = bg >= 0
        smoothing = hp["label_smoothing"]
        ce_fg = F.cross_entropy(fg_logits, fg, label_smoothing=smoothing)
        ce_bg = F.cross_entropy(bg_logits[labelled], bg[labelled], label_smoothing=smoothing) if labelled.any() else ce_fg.new_zeros(())
        d_fg, d_bg = self.dependence(z_fg, z_bg, fg, bg)  # held out: the critics have not seen this batch
        weight = hp["critic_weight"] * self.ramp(int(self.step))
        loss = hp["alpha"] * (ce_fg + ce_bg) + weight * (self.penalty(d_fg) + self.penalty(d_bg))
        # the critics' own gradients from this loss are discarded (zeroed before their next step)
        self._model_step(loss)
        self.remember(z_fg, z_bg, fg, bg)
        self.track_correlation(z_fg, z_bg, bg)
        self.step += 1
        return {"loss": loss.item(), "ce_fg": ce_fg.item(), "ce_bg": ce_bg.item(), f"{self.logged}_fg": d_fg.item(),
                f"{self.logged}_bg": d_bg.item(), **logs}


class WassersteinDisentanglement(Disentanglement):
    """Eq. 9-10: alternate critic steps (on detached features of earlier batches) and a model step.

    The gap that drives the model is measured on the current batch by critics that have never seen
    it: they are fitted on minibatches drawn from a memory of *earlier* batches, and the current
    batch joins the memory only after the model step. A critic scored on the points it was fitted on
    finds a gap even when z and the labels are independent (its own fit: at ResNet-50's sizes, 1798
    features against 10 labels, that fit is most of the gap), and the model would follow that noise.
    On a batch the critic has not seen, the gap's expectation is exactly 0 under independence (the
    critic is independent of the batch), and positive when the critic has found real dependence.
    """

    def __init__(self, model, hparams):
        super().__init__(model, hparams)
        depth, width = hparams["critic_depth"], hparams["critic_width"]
        low = hparams["critic_min_width"]
        self.critic_fg = Critic(model.fg_dim, len(model.bg_names), depth, width, low)  # D_fg(z_fg, l_bg)
        self.critic_bg = Critic(model.bg_dim, len(model.fg_names), depth, width, low)  # D_bg(z_bg, l_fg)
        self.critic_optimizer = self._critic_optimizer(hparams["betas"])

    def gaps(self, z_fg, z_bg, fg, bg) -> tuple[torch.Tensor, torch.Tensor]:
        """The two critic gaps on the critics' view of z (`view`); D_fg needs bg labels, so fg-only
        rows (``bg == -1``) only enter D_bg. Gradients flow into z."""
        labelled = bg >= 0
        v_fg, bg_labelled = self.view(z_fg[labelled], "fg"), bg[labelled]
        gap_fg = self.critic_fg.gap(v_fg, bg_labelled) if len(bg_labelled) > 1 else v_fg.new_zeros(())
        return gap_fg, self.critic_bg.gap(self.view(z_bg, "bg"), fg)

    dependence = gaps

    def penalty(self, gap: torch.Tensor) -> torch.Tensor:
        """What the model pays for a critic gap. The critic class is symmetric (f and -f), so W >= |gap(f)|:
        a negative gap on a new batch is dependence all the same, and minimising the signed gap would reward
        the model for encoding the label the other way round. ``"abs"`` pays |gap|; ``"huber"`` (the default)
        pays gap^2 / 2 up to ``critic_huber_delta`` and linearly beyond: a large gap is pushed as hard as with
        |gap|, but a small one, mostly the critic's noise on a batch it has not seen, barely moves the encoder,
        which keeps its fg accuracy (README toy, seed 0, standardised views: fg 0.960 against 0.934 with |gap|)."""
        if self.hparams["critic_penalty"] == "abs":
            return gap.abs()
        return F.huber_loss(gap, torch.zeros_like(gap), reduction="none", delta=float(self.hparams["critic_huber_delta"]))

    def critic_loss(self, v_fg, bg_labelled, v_bg, fg_rows, generator):
        """Eq. 9 for both critics: WGAN-GP, the gaps on the memory's minibatch maximised."""
        gap_bg = self.critic_bg.gap(v_bg, fg_rows)
        gp = self.critic_bg.gradient_penalty(v_bg, fg_rows, generator)
        gap_fg = v_fg.new_zeros(())
        if len(bg_labelled) > 1:
            gap_fg = self.critic_fg.gap(v_fg, bg_labelled)
            gp = gp + self.critic_fg.gradient_penalty(v_fg, bg_labelled, generator)
        loss = -(gap_fg + gap_bg) + self.hparams["gp_weight"] * gp  # eq. 9 for both critics
        return loss, {"critic_gp": gp.item(), "critic_fit_fg": gap_fg.item(), "critic_fit_bg": gap_bg.item()}


class AdversarialDisentanglement(Disentanglement):
    """DANN / CDANN style (Ganin et al. 2016; Li et al. 2018): classifiers of the other label as adversaries.

    ``critic_fg`` classifies bg from z_fg and ``critic_bg`` fg from z_bg: the :class:`Critic` MLP read as logits
    (``critic_depth=1``: multinomial logistic regression, the linear probe itself), fitted by cross-entropy,
    ``critic_steps`` Adam steps per model step on minibatches of the memory of earlier batches, on the critics'
    whitened view (standardising takes away the escape of shrinking z under a fixed adversary; whitening
    preconditions its fit). The memory, view, warm-up and ramp are the Wasserstein method's (:class:`Disentanglement`).

    What the encoder is trained against, on the current batch, which the adversaries have not seen:

        info = CE(l, marginal) - CE(l, q'),   q' = (1 - m) q(l | z) + m marginal   (nats)

    the adversary's gain in log-likelihood over the best constant prediction, the label marginal (running
    counts of every label seen). For any fixed predictor, ``E CE(l, q') >= H(l | z)``, so ``E info <= I(z; l)``
    (up to the error of the estimated marginal; Barber-Agakov): ``info`` is a held-out estimate of what a probe of
    the adversary's class reads of the label, a lower bound on the information z carries about it. The model
    pays ``max(info, 0)``: DANN's gradient reversal on the adversary's cross-entropy while the adversary beats
    the marginal, nothing once it does no better. So this is the min-max of the adversary's cross-entropy
    against the marginal's entropy: the adversary minimises CE, the encoder raises it up to CE(l, marginal).
    CDANN conditions its adversary on the class; the requirement here is the paper's (z_fg independent of
    l_bg, z_bg of l_fg), so each adversary reads one part of z alone, as the Wasserstein critics do.

    - Why not plain gradient reversal (maximise CE without limit; ``adversary_objective="reversal"``): -CE has
      a gradient whatever z holds. When z and l are independent, raising CE means moving rows to where the
      fixed adversary is confidently wrong, i.e. putting structure into z for the next adversary to chase.
      Under independence ``info``'s expectation is <= 0: in tests/test_adversarial.py (56-d z_fg against 5 bg,
      8-d z_bg against 20 fg) the hinge is active on a quarter of the steps and its gradient into z is an
      eighth of reversal's, which pushes on every step. On the small features toy (README, three seeds) the two
      end within the seeds' spread (linear cross-leakage 0.20-0.28 of the ablation's, reversal 0.17-0.25), reversal
      with fg_from_fg about 0.01 lower under either probe.
    - Why the mixture ``m`` (``adversary_mixture``, 0.5): a classifier fitted on a few hundred remembered rows
      of a wide z is overconfident on new rows, and one confidently wrong row costs unboundedly many nats. At the
      paper's sizes, with plain q, the held-out information stayed negative with a planted dependence the
      adversary does read (1798-d z_fg against 10 bg, 60 steps: -3.7 nats at a held-out accuracy of 0.28, chance
      0.10); with q' it is +0.12 (independent: -0.33). ``q'`` is a predictor too, so the bound holds.
    - Why not the label-free confusion loss, KL(marginal || q(z)) (``adversary_objective="confusion"``): it
      moves every row towards where the adversary is undecided, dependent or not, and on the small features
      toy it removed less (linear bg_from_fg 0.47 against 0.29-0.34) at a cost in fg (MLP probe's fg_from_fg
      0.83-0.85 against 0.88-0.89).

    What it attacks: what the adversary's class reads. A linear adversary (``critic_depth=1``) is the linear
    probe: the encoder can keep the label where only a nonlinear read-out finds it. The default (one hidden
    layer) reads nonlinear dependence as well, and on the small features toy it does better on both probes (linear
    cross-leakage 0.20-0.28 of the ablation's, MLP 0.09-0.31; a linear adversary: 0.30 and 0.23-0.31). The
    Wasserstein critics remove more there (0.11-0.16 and 0.11-0.19) in about twice the time (1000 steps on
    one CPU thread: 9-10 s against 4-6 s; no gradient penalty, so no double backward).
    """

    logged = "info"

    def __init__(self, model, hparams):
        super().__init__(model, hparams)
        depth, width = hparams["critic_depth"], hparams["critic_width"]
        low = hparams["critic_min_width"]
        self.critic_fg = Critic(model.fg_dim, len(model.bg_names), depth, width, low)  # q(l_bg | z_fg): logits
        self.critic_bg = Critic(model.bg_dim, len(model.fg_names), depth, width, low)  # q(l_fg | z_bg): logits
        self.critic_optimizer = self._critic_optimizer((0.9, 0.999))  # Adam's defaults: a plain classification fit
        # counts of every label seen so far (buffers: checkpointed; integers, exact however long the run), for the
        # marginal the adversaries must beat
        self.register_buffer("fg_counts", torch.zeros(len(model.fg_names), dtype=torch.long))
        self.register_buffer("bg_counts", torch.zeros(len(model.bg_names), dtype=torch.long))

    def remember(self, z_fg, z_bg, fg, bg) -> None:
        super().remember(z_fg, z_bg, fg, bg)
        self.fg_counts += torch.bincount(fg, minlength=len(self.fg_counts))
        self.bg_counts += torch.bincount(bg[bg >= 0], minlength=len(self.bg_counts))

    def information(self, critic: nn.Module, v: torch.Tensor, labels: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``CE(l, marginal) - CE(l, q')`` on these rows, ``q' = (1 - m) q(l | v) + m marginal`` with ``m`` the
        ``adversary_mixture`` and the marginal from ``counts``, add-one smoothed (a label never seen costs
        log(seen + classes), not infinity). With ``adversary_objective="reversal"``, ``-CE(l, q)``; with
        ``"confusion"``, ``KL(marginal || q)`` averaged over the rows."""
        hp = self.hparams
        log_q = critic(v).float().log_softmax(1)
        if hp["adversary_objective"] == "reversal":
            return -F.nll_loss(log_q, labels)
        log_marginal = torch.log((counts.float() + 1) / (counts.sum().float() + len(counts)))
        if hp["adversary_objective"] == "confusion":
            return F.kl_div(log_q, log_marginal.expand_as(log_q), log_target=True, reduction="batchmean")
        m = float(hp["adversary_mixture"])
        if m > 0:  # log((1 - m) q + m marginal), without leaving log space
            log_q = log_marginal.expand_as(log_q) if m == 1 else torch.logaddexp(log_q + math.log1p(-m), log_marginal + math.log(m))
        return -log_marginal[labels].mean() - F.nll_loss(log_q, labels)

    def dependence(self, z_fg, z_bg, fg, bg):
        """The adversaries' held-out information (nats) on the current batch; rows without a bg label only
        enter the fg adversary on z_bg. Gradients flow into z."""
        labelled = bg >= 0
        v_fg, bg_labelled = self.view(z_fg[labelled], "fg"), bg[labelled]
        info_fg = self.information(self.critic_fg, v_fg, bg_labelled, self.bg_counts) if len(bg_labelled) > 1 else v_fg.new_zeros(())
        return info_fg, self.information(self.critic_bg, self.view(z_bg, "bg"), fg, self.fg_counts)

    def penalty(self, info: torch.Tensor) -> torch.Tensor:
        """``max(info, 0)``: the reversed gradient while the adversary beats the label marginal, then nothing. A
        negative ``info`` is not dependence (unlike a Wasserstein critic's class, a classifier's bound is one-sided:
        an adversary worse than the marginal has merely mis-fitted). With the other objectives the estimate is
        paid as it is (``"reversal"``: -CE, DANN's unbounded objective; ``"confusion"``: KL(marginal || q))."""
        return F.relu(info) if self.hparams["adversary_objective"] == "information" else info

    def critic_loss(self, v_fg, bg_labelled, v_bg, fg_rows, generator):
        """The adversaries' cross-entropies on the memory's minibatch (the fg-side one on labelled rows)."""
        ce_bg = F.cross_entropy(self.critic_bg(v_bg).float(), fg_rows)
        ce_fg = F.cross_entropy(self.critic_fg(v_fg).float(), bg_labelled) if len(bg_labelled) > 0 else v_bg.new_zeros(())
        return ce_fg + ce_bg, {"critic_ce_fg": ce_fg.item(), "critic_ce_bg": ce_bg.item()}


METHODS: dict[str, type[Algorithm]] = {
    "wasserstein": WassersteinDisentanglement,
    "erm": ERM,
    "groupdro": GroupDRO,
    "irm": IRM,
    "adversarial": AdversarialDisentanglement,
}


def build(method: str, model: nn.Module, hparams: dict[str, Any]) -> Algorithm:
    if method not in METHODS:
        raise HparamError(f"unknown --method {method!r}; choose from {', '.join(METHODS)}.")
    return METHODS[method](model, hparams)
