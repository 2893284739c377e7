"""Classifiers to benchmark: one registry and one factory for timm models and CLIP zero-shot heads.

A name resolves in two stages, like timm's ``create_model``:

1. :func:`resolve_classifier` checks the name and reads what travels with the weights (the
   preprocessing config, the label space, the model family) without loading any weight, so a
   bad name or a non-ImageNet-1k label space fails before any image is decoded;
2. :meth:`ClassifierSpec.build` loads the model (weights, and for CLIP the zero-shot head).

Names:

- a timm name, ``arch`` or ``arch.tag`` (``resnet50.tv_in1k``); its preprocessing comes from the
  pretrained config through ``timm.data.resolve_data_config`` (explicit overrides, then the
  model's config, then timm's defaults); never hard-coded here;
- ``local-dir:<folder>``: a timm model folder (``config.json`` + ``model.safetensors``, as timm's
  ``save_for_hf`` writes), its preprocessing from that config;
- ``tf_efficientnet_lite0.pypi_in1k``: real ImageNet-1k weights that install offline from PyPI
  (:mod:`d3s.offline_weights`, converted once into a ``local-dir:`` folder);
- ``clip:<arch>/<pretrained>`` (``clip:ViT-B-32/openai``): an open_clip model as a zero-shot
  classifier over the 1000 ImageNet classes; its preprocessing is open_clip's config for those
  weights (size from the model config, mean/std/interpolation from the pretrained config);
- ``clip:tiny``: a tiny random CLIP built locally (offline tests and smoke runs);
- ``d3s:<checkpoint>`` (``d3s:out/wd``, a ``d3s train --out`` folder or a Hub id): a disentangled
  extractor trained on D3S, as a classifier through its fg head on z_fg (the paper's ``w_fg^T z_fg``),
  with its own preprocessing (resize and centre crop to its image size, bicubic, its mean/std).

Zero-shot heads use the paper's single prompt ``a photo of a {name}`` by default, or OpenAI's 80
ImageNet templates averaged (``prompts="ensemble"``). Class names (``names``): ``lemma`` (the
first WordNet lemma, as the generator's prompts; the names two classes share, ``crane`` and
``maillot``, get their WordNet definition appended so crane the bird is not crane the machine),
``definition`` (every class as ``{lemma}, {definition}``: the D3S generation prompt's prefix), or
``openai`` (the hand-edited names of the CLIP paper, shipped with open_clip).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .choices import CLIP_NAMES as NAME_STYLES, CLIP_PROMPTS as PROMPT_SETS
from .labels import close_matches

CLIP_PREFIX = "clip:"
LOCAL_DIR_PREFIX = "local-dir:"
CLIP_TINY = "clip:tiny"
D3S_PREFIX = "d3s:"
SINGLE_PROMPT = "a photo of a {}."

# Families of the paper's figure 4/9, with today's timm names (and OpenAI's CLIP weights).
# ``extra_data``: trained on more than ImageNet-1k train (hatched in the paper's bar chart).
DEFAULT_MODELS: tuple[tuple[str, str, bool], ...] = (
    ("resnet50.tv_in1k", "supervised CNN", False),
    ("resnext50_32x4d.tv_in1k", "supervised CNN", False),
    ("densenet121.tv_in1k", "supervised CNN", False),
    ("efficientnet_b0.ra_in1k", "supervised CNN", False),
    ("inception_resnet_v2.tf_in1k", "supervised CNN", False),
    ("mobilenetv3_large_100.ra_in1k", "supervised CNN", False),
    ("resnetv2_50x1_bit.goog_in21k_ft_in1k", "supervised CNN", True),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "transformer", True),
    ("deit_base_patch16_224.fb_in1k", "transformer", False),
    ("inception_v3.tf_adv_in1k", "adversarially trained", False),
    ("inception_resnet_v2.tf_ens_adv_in1k", "adversarially trained", False),
    ("resnet50.fb_ssl_yfcc100m_ft_in1k", "semi-supervised", True),
    ("resnet50.fb_swsl_ig1b_ft_in1k", "semi-weakly supervised", True),
    ("resnext50_32x4d.fb_swsl_ig1b_ft_in1k", "semi-weakly supervised", True),
    ("beit_base_patch16_224.in22k_ft_in22k_in1k", "self-supervised fine-tuned", True),
    ("clip:ViT-B-32/openai", "CLIP zero-shot", True),
    ("clip:ViT-B-16/openai", "CLIP zero-shot", True),
    ("clip:RN50/openai", "CLIP zero-shot", True),
)
_DEFAULT_FAMILY = {name: (family, extra) for name, family, extra in DEFAULT_MODELS}
# Pretrained tags that mean "more data than ImageNet-1k train" (hatched bars).
_EXTRA_DATA_TAG = re.compile(r"in21k|in22k|in12k|ig1b|ig3b|yfcc|jft|laion|openai|dfn|datacomp|merged|lvd|sw|ssl|metaclip")

# Tiny random CLIP: 2-layer towers, width 32, 64 px input, the real CLIP tokenizer (offline).
TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


class ClassifierError(ValueError):
    """A classifier name that does not exist, or whose label space is not ImageNet-1k."""


@dataclass
class Classifier:
    """A built model: ``model(x)`` maps a normalised batch to 1000 ImageNet-1k logits."""

    spec: "ClassifierSpec"
    model: Any  # torch.nn.Module

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ClassifierSpec:
    """A resolved name: everything known before any weight is loaded.

    Args:
        name (`str`): the name as given (``resnet50.tv_in1k``, ``clip:ViT-B-32/openai``).
        kind (`str`): ``timm``, ``clip`` or ``d3s``.
        family (`str`): model family, for the plots (figure 4/9 colours).
        extra_data (`bool`): trained on more than ImageNet-1k train (hatched bars).
        data_config (`dict`): ``input_size``, ``interpolation``, ``crop_pct``, ``crop_mode``, ``mean``, ``std``.
        pretrained (`bool`): load the released weights (``False``: random weights, offline).
        options (`dict`): CLIP head settings (``prompts``, ``names``); part of a result's identity.
    """

    name: str
    kind: str
    family: str
    extra_data: bool
    data_config: dict
    pretrained: bool = True
    options: dict = field(default_factory=dict)
    _builder: Callable | None = field(default=None, repr=False, compare=False)

    @property
    def decode_key(self) -> tuple:
        """Models with the same key share decoded, resized images (normalisation is per model, on device)."""
        c = self.data_config
        return (tuple(c["input_size"]), c["interpolation"], round(float(c["crop_pct"]), 6), c["crop_mode"])

    @property
    def is_clip(self) -> bool:
        return self.kind == "clip"

    def identity(self) -> dict:
        """What a stored result must match to be reused."""
        return {"name": self.name, "pretrained": self.pretrained, "data_config": _jsonable(self.data_config), **self.options}

    def build(self, device: str = "cpu") -> Classifier:
        if self._builder is None:
            raise ClassifierError(f"{self.name!r} has no builder")
        model = self._builder(device)
        model.eval()
        return Classifier(self, model)


def _jsonable(cfg: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def _close(word: str, choices, n: int = 5) -> list[str]:
    return close_matches(word, choices, n=n, cutoff=0.6)


def _family_of(name: str, arch: str, tag: str) -> tuple[str, bool]:
    if name in _DEFAULT_FAMILY:
        return _DEFAULT_FAMILY[name]
    extra = bool(_EXTRA_DATA_TAG.search(tag or ""))
    if re.search(r"adv", tag or ""):
        return "adversarially trained", extra
    if re.search(r"swsl", tag or ""):
        return "semi-weakly supervised", True
    if re.search(r"ssl", tag or ""):
        return "semi-supervised", True
    if arch.startswith(("beit", "dino", "mae")):
        return "self-supervised fine-tuned", extra
    if re.match(r"(vit|deit|swin|eva|cait|xcit|pit|twins|levit|test_vit)", arch):
        return "transformer", extra
    return "supervised CNN", extra


# --- timm ----------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _timm_pretrained() -> frozenset[str]:
    import timm

    return frozenset(timm.list_pretrained())


def _timm_config(name: str) -> tuple[str, str, dict]:
    """(architecture, pretrained tag, pretrained config) of a timm name, a ``local-dir:`` folder or the
    offline weights' registered name, reading no weights."""
    import timm
    from timm.models import get_pretrained_cfg, split_model_name_tag

    from . import offline_weights

    if name == offline_weights.NAME:
        return offline_weights.ARCH, offline_weights.TAG, offline_weights.pretrained_cfg()
    if name.startswith(LOCAL_DIR_PREFIX):
        from timm.models._hub import load_model_config_from_path

        try:
            cfg, arch, _ = load_model_config_from_path(name[len(LOCAL_DIR_PREFIX) :])
        except (OSError, ValueError, KeyError) as err:
            raise ClassifierError(f"{name!r} is not a timm model folder (config.json with architecture and "
                                  f"pretrained_cfg, as timm's save_for_hf writes): {err}") from None
        if not timm.is_model(arch):
            raise ClassifierError(f"{name!r}: its config.json names {arch!r}, which is not a timm architecture.")
        # JSON gave lists where timm's own configs hold tuples: the same preprocessing must compare equal
        return arch, cfg.get("tag") or "", {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}
    arch, tag = split_model_name_tag(name)
    if not timm.is_model(arch):
        close = _close(name, list(_timm_pretrained()) + timm.list_models() + [offline_weights.NAME]) or _close(arch, timm.list_models())
        hint = f" Close matches: {', '.join(close)}." if close else " See timm.list_models() or use clip:<arch>/<pretrained>."
        raise ClassifierError(f"Unknown model {name!r}: not a timm model.{hint}")
    full = f"{arch}.{tag}" if tag else name
    if tag and full not in _timm_pretrained():
        tags = sorted(t for t in _timm_pretrained() if t.startswith(arch + "."))
        tags += [offline_weights.NAME] if arch == offline_weights.ARCH else []
        close = _close(full, tags) or tags[:8]
        raise ClassifierError(f"Unknown pretrained tag {tag!r} for timm model {arch!r}. Its tags: {', '.join(close) or 'none'}.")
    cfg = get_pretrained_cfg(full)
    if cfg is None:
        raise ClassifierError(f"timm model {name!r} has no pretrained config, so its preprocessing and label space are unknown.")
    return arch, cfg.tag or "", cfg.to_dict()


# The Backgrounds Challenge feeds its IN-9 models (trained on the 9 classes) the 224 px images as they are, normalised
# with IN-9's own mean and std (its ImageNet9 dataset definition).
IN9_MEAN = (0.4717, 0.4499, 0.3837)
IN9_STD = (0.2600, 0.2516, 0.2575)
IN9_KIND = "in9"


def resolve_in9_classifier(name: str, pretrained: bool = True) -> ClassifierSpec:
    """A classifier with 9 outputs, the IN-9 classes in the challenge's order (a model trained on IN-9, as the
    challenge's IN-9L rows), scored directly in IN-9: a timm name or ``local-dir:`` folder whose config says 9
    classes. Its preprocessing is the challenge's: the images whole at 224 px, IN-9's mean and std."""
    from .offline_weights import create_timm_model

    arch, tag, cfg = _timm_config(name)
    n_classes = (cfg.get("num_classes") or 0) - (cfg.get("label_offset") or 0)
    if n_classes != 9:
        raise ClassifierError(f"--in9-model {name!r} predicts {cfg.get('num_classes')} classes, not the 9 IN-9 classes; "
                              "give ImageNet-1k classifiers with --models.")
    data_config = {"input_size": (3, 224, 224), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
                   "mean": IN9_MEAN, "std": IN9_STD}

    def build(device: str):
        return create_timm_model(name, pretrained=pretrained).to(device)

    return ClassifierSpec(name, IN9_KIND, "IN-9 classifier", False, data_config, pretrained, {}, build)


def _resolve_timm(name: str, pretrained: bool) -> ClassifierSpec:
    from timm.data import resolve_data_config

    from .offline_weights import create_timm_model

    arch, tag, cfg = _timm_config(name)
    n_classes = (cfg.get("num_classes") or 0) - (cfg.get("label_offset") or 0)
    if n_classes != 1000:
        in1k = sorted(t for t in _timm_pretrained() if t.startswith(arch + ".") and t.endswith("in1k"))
        hint = f" Its ImageNet-1k weights: {', '.join(in1k[:6])}." if in1k else ""
        raise ClassifierError(
            f"Model {name!r} predicts {cfg.get('num_classes')} classes ({tag or 'default tag'}), not the 1000 ImageNet-1k "
            f"classes that D3S labels use, so its accuracy cannot be measured.{hint}"
        )
    data_config = resolve_data_config(pretrained_cfg=cfg)
    family, extra = _family_of(name, arch, tag)
    label_offset = cfg.get("label_offset") or 0

    def build(device: str):
        model = create_timm_model(name, pretrained=pretrained)
        if label_offset:  # e.g. TF weights with a background class first: keep the 1000 real ones
            model = _DropLeadingLogits(model, label_offset)
        return model.to(device)

    return ClassifierSpec(name, "timm", family, extra, data_config, pretrained, {}, build)


class _DropLeadingLogits(torch.nn.Module):
    """Wraps a model whose first ``offset`` outputs are not ImageNet-1k classes."""

    def __init__(self, model: torch.nn.Module, offset: int):
        super().__init__()
        self.inner, self.offset = model, offset

    def forward(self, x):
        return self.inner(x)[:, self.offset :]


# --- CLIP ----------------------------------------------------------------------------------------

def class_names(style: str = "lemma") -> list[str]:
    """The 1000 class names a zero-shot head is built from (see the module docstring)."""
    from .labels import imagenet_classes

    classes = imagenet_classes()
    if style == "openai":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

        return list(IMAGENET_CLASSNAMES)
    if style == "definition":
        return [f"{c.prompt_name}, {c.definition}" for c in classes]
    if style != "lemma":
        raise ClassifierError(f"Unknown class-name style {style!r}; valid: {', '.join(NAME_STYLES)}.")
    first = [c.prompt_name for c in classes]
    shared = {n for n in first if first.count(n) > 1}
    return [f"{c.prompt_name}, {c.definition}" if c.prompt_name in shared else c.prompt_name for c in classes]


def prompt_templates(prompts: str = "single") -> list[str]:
    """``single``: the paper's ``a photo of a {name}.``; ``ensemble``: OpenAI's 80 ImageNet templates."""
    if prompts == "single":
        return [SINGLE_PROMPT]
    if prompts == "ensemble":
        from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

        return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    raise ClassifierError(f"Unknown prompt set {prompts!r}; valid: {', '.join(PROMPT_SETS)}.")


class ZeroShotClassifier(torch.nn.Module):
    """CLIP image tower + a fixed text-embedding head: logits over the 1000 classes."""

    def __init__(self, clip_model: torch.nn.Module, head: torch.Tensor):
        super().__init__()
        self.clip = clip_model
        self.register_buffer("head", head)  # (embed_dim, 1000), unit columns

    def forward(self, x):
        feats = self.clip.encode_image(x)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return 100.0 * feats @ self.head.to(feats.dtype)


def zero_shot_head(clip_model, tokenizer, names: list[str], templates: list[str], device: str = "cpu"):
    """Average the unit text embeddings of each class's prompts; returns (embed_dim, n_classes)."""
    with torch.no_grad():  # not inference_mode: the head becomes a buffer of a module used later
        columns = []
        for i in range(0, len(names), 100):
            chunk = names[i : i + 100]
            tokens = tokenizer([t.format(n) for n in chunk for t in templates]).to(device)
            emb = clip_model.encode_text(tokens).float()
            emb = emb / emb.norm(dim=-1, keepdim=True)
            emb = emb.reshape(len(chunk), len(templates), -1).mean(dim=1)
            columns.append(emb / emb.norm(dim=-1, keepdim=True))
        return torch.cat(columns).T.contiguous().clone()


def _tiny_clip(seed: int = 0):
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    cfg = TINY_CLIP_CFG
    return CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"])


def _resolve_clip(name: str, pretrained: bool, prompts: str, names: str) -> ClassifierSpec:
    import open_clip
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    prompt_templates(prompts)  # check the options up front
    if names not in NAME_STYLES:
        raise ClassifierError(f"Unknown class-name style {names!r}; valid: {', '.join(NAME_STYLES)}.")
    spec = name[len(CLIP_PREFIX) :]
    known = [f"{CLIP_PREFIX}{a}/{t}" for a, t in open_clip.list_pretrained()] + [CLIP_TINY]
    if name == CLIP_TINY:
        arch, tag, size = "tiny", "random", TINY_CLIP_CFG["vision_cfg"]["image_size"]
        pcfg: dict = {}
    else:
        if "/" not in spec:
            close = [k for k in known if k.startswith(f"{CLIP_PREFIX}{spec}/")][:6] or _close(name, known)
            raise ClassifierError(f"CLIP name {name!r} needs the weights too: clip:<arch>/<pretrained>, e.g. {', '.join(close) or 'clip:ViT-B-32/openai'}.")
        arch, tag = spec.split("/", 1)
        if (arch, tag) not in set(open_clip.list_pretrained()):
            close = _close(name, known)
            hint = f" Close matches: {', '.join(close)}." if close else " See open_clip.list_pretrained()."
            raise ClassifierError(f"Unknown CLIP model {name!r}.{hint}")
        pcfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        vision = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {})
        size = vision.get("image_size", 224)
    size = size if isinstance(size, int) else size[0]
    # open_clip's eval transform: resize the short side to the input size, centre crop (crop_pct 1).
    data_config = {
        "input_size": (3, size, size),
        "interpolation": pcfg.get("interpolation", "bicubic"),
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(pcfg.get("mean", OPENAI_DATASET_MEAN)),
        "std": tuple(pcfg.get("std", OPENAI_DATASET_STD)),
    }
    family, extra = _DEFAULT_FAMILY.get(name, ("CLIP zero-shot", True))

    def build(device: str):
        if name == CLIP_TINY:
            model = _tiny_clip()
        else:
            model = open_clip.create_model(arch, pretrained=tag if pretrained else None, device=device)
        model = model.to(device).eval()
        tokenizer = open_clip.get_tokenizer("ViT-B-32" if name == CLIP_TINY else arch)
        head = zero_shot_head(model, tokenizer, class_names(names), prompt_templates(prompts), device)
        return ZeroShotClassifier(model, head).to(device)

    return ClassifierSpec(name, "clip", family, extra, data_config, pretrained or name == CLIP_TINY,
                          {"prompts": prompts, "names": names}, build)


# --- d3s extractors ------------------------------------------------------------------------------

class FgHeadClassifier(torch.nn.Module):
    """A :class:`~d3s.models.DisentangledExtractor` as an ImageNet-1k classifier: its fg head on z_fg (after the
    neck and the LEACE erasers, when the checkpoint has them: the z_fg its fg head was trained or measured on).

    Takes normalised images (the extractor's own normalisation is skipped: the caller's follows its mean/std).
    """

    def __init__(self, extractor: torch.nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x):
        return self.extractor.forward_normalized(x, with_heads=True)[1][:, :1000]


def extractor_files(path: str) -> tuple[dict, str]:
    """A checkpoint's ``config.json`` and a digest of its weights, without loading them."""
    import hashlib
    import json
    from pathlib import Path

    folder = Path(path)
    if folder.exists():
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ClassifierError(f"{path} is not a d3s checkpoint: it needs config.json and model.safetensors (made by `d3s train --out`).")
        digest = hashlib.sha256()
        with open(folder / "model.safetensors", "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
        return json.loads((folder / "config.json").read_text()), digest.hexdigest()[:16]
    from huggingface_hub import hf_hub_download

    try:
        config_path = Path(hf_hub_download(path, "config.json"))
    except Exception as err:  # not a repo id, offline, no such repo
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ClassifierError(f"d3s checkpoint {path!r} is not a local folder, and the Hub says: {first}") from None
    return json.loads(config_path.read_text()), f"hub:{config_path.parent.name}"  # the snapshot's commit


def _resolve_extractor(name: str) -> ClassifierSpec:
    from timm.models import get_pretrained_cfg

    from .labels import imagenet_classes
    from .models import IMAGENET_MEAN, IMAGENET_STD

    path = name[len(D3S_PREFIX) :]
    if not path:
        raise ClassifierError("d3s: needs a checkpoint, e.g. d3s:out/wd (a `d3s train --out` folder) or d3s:ORG/NAME.")
    config, digest = extractor_files(path)
    if not isinstance(config.get("backbone"), str):
        raise ClassifierError(f"{path} is not a d3s checkpoint: its config.json names no backbone.")
    fg_names = list(config.get("fg_names") or [])
    if fg_names[:1000] != [c.name for c in imagenet_classes()]:
        raise ClassifierError(
            f"d3s checkpoint {path!r} has {len(fg_names)} fg classes ({', '.join(fg_names[:3])}...), not the 1000 ImageNet-1k "
            "classes first: only an extractor trained on D3S (fg labels = ImageNet classes) answers in ImageNet classes."
        )
    # the extractor's own normalisation: its config, else its backbone's pretrained config, else ImageNet's
    backbone_cfg = get_pretrained_cfg(config["backbone"])
    size = int(config.get("image_size") or 224)
    data_config = {
        "input_size": (3, size, size),
        "interpolation": "bicubic",  # as d3s.data resizes for training and feature extraction
        "crop_pct": 1.0,
        "crop_mode": "center",
        "mean": tuple(config.get("mean") or (backbone_cfg.mean if backbone_cfg else IMAGENET_MEAN)),
        "std": tuple(config.get("std") or (backbone_cfg.std if backbone_cfg else IMAGENET_STD)),
    }

    def build(device: str):
        from .models import load_extractor

        return FgHeadClassifier(load_extractor(path)).to(device)

    return ClassifierSpec(name, "d3s", "d3s extractor (fg head)", True, data_config, True, {"weights": digest}, build)


# --- the factory ---------------------------------------------------------------------------------

def default_model_names() -> list[str]:
    return [name for name, _, _ in DEFAULT_MODELS]


def parse_model_list(spec: str | list[str] | None) -> list[str]:
    """``"default"`` (or nothing) -> the default list; otherwise a comma-separated list, duplicates dropped."""
    items = spec if isinstance(spec, list) else [s.strip() for s in (spec or "default").split(",") if s.strip()]
    out: list[str] = []
    for item in items:
        out.extend(default_model_names() if item == "default" else [item])
    if not out:
        raise ClassifierError("No model given: pass --models with timm names, clip:<arch>/<pretrained>, or 'default'.")
    return list(dict.fromkeys(out))


def resolve_classifier(name: str, pretrained: bool = True, prompts: str = "single", names: str = "lemma") -> ClassifierSpec:
    """Check a name and read its preprocessing and label space, loading no weights.

    Args:
        name (`str`): timm ``arch[.tag]``, ``local-dir:<folder>``, ``tf_efficientnet_lite0.pypi_in1k``,
            ``clip:<arch>/<pretrained>``, ``clip:tiny`` or ``d3s:<checkpoint>``.
        pretrained (`bool`, *optional*, defaults to `True`): released weights; `False` builds random
            weights offline (the preprocessing config is still the released weights').
        prompts (`str`, *optional*, defaults to ``"single"``): CLIP prompts, ``single`` or ``ensemble``.
        names (`str`, *optional*, defaults to ``"lemma"``): CLIP class names, ``lemma``, ``definition`` or ``openai``.

    Example::

        >>> spec = resolve_classifier("test_resnet", pretrained=False)
        >>> spec.data_config["input_size"], spec.family
        ((3, 160, 160), 'supervised CNN')
    """
    name = name.strip()
    if name.startswith(CLIP_PREFIX):
        return _resolve_clip(name, pretrained, prompts, names)
    if name.startswith(D3S_PREFIX):
        return _resolve_extractor(name)
    return _resolve_timm(name, pretrained)


def resolve_classifiers(model_names: list[str], **kwargs) -> list[ClassifierSpec]:
    """Resolve every name, collecting all problems into one error."""
    specs, problems = [], []
    for n in model_names:
        try:
            specs.append(resolve_classifier(n, **kwargs))
        except ClassifierError as err:
            problems.append(str(err))
    if problems:
        raise ClassifierError(" ".join(problems))
    return specs
