"""Batched inference of a classifier on decoded images: device choice, normalisation on the device,
channels-last on CUDA, a chosen precision (fp32 by default, as timm's ``validate.py`` and the Backgrounds
Challenge score), the batch halved on out-of-memory, top-5 predictions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .choices import PRECISION_HELP, PRECISIONS  # noqa: F401 (re-exported)


class PrecisionError(ValueError):
    """An unknown precision name."""


def autocast_dtype(precision: str):
    """The autocast dtype of a precision name, or None for fp32 (no autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise PrecisionError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def resolve_precision(precision: str, device) -> str:
    """``auto`` -> bf16 on CUDA, fp32 elsewhere; any other name is checked and returned."""
    if precision == "auto":
        return "bf16" if getattr(device, "type", str(device)).startswith("cuda") else "fp32"
    autocast_dtype(precision)
    return precision


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def on_device(model, data_config: dict, device="cpu", precision: str = "fp32") -> Callable:
    """The model on ``device``, as a function from an image batch already there (uint8 or float 0..255,
    ``(N, 3, H, W)``) to float32 outputs.

    Normalisation with the model's own mean/std happens on the device. On CUDA the model runs channels-last.
    ``precision`` is ``fp32`` (no autocast, on every device), ``bf16`` or ``fp16`` (autocast to that dtype).
    Call it under ``torch.inference_mode()``.
    """
    import torch

    amp_dtype = autocast_dtype(precision)
    device = torch.device(device)
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1) * 255

    def logits(x):
        x = x.float().sub_(mean).div_(std) if x.dtype == torch.uint8 else (x - mean) / std
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            return model(x).float()

    return logits


def run_batches(model, data_config: dict, images: np.ndarray, on_batch: Callable, batch_size: int = 64, device="cpu",
                desc: str | None = None, progress: bool = False, precision: str = "fp32") -> None:
    """Run ``model`` (as :func:`on_device` wraps it, at ``precision``) on uint8 images ``(N, 3, H, W)`` in batches,
    calling ``on_batch(start, stop, output)``; an out-of-memory batch is retried at half the size."""
    import torch
    from tqdm.auto import tqdm

    device = torch.device(device)
    cuda = device.type == "cuda"
    outputs_of = on_device(model, data_config, device, precision)
    n = len(images)
    bar = tqdm(total=n, unit="img", desc=desc, disable=not progress)
    start = 0
    with torch.inference_mode():
        while start < n:
            stop = min(start + batch_size, n)
            try:
                x = torch.from_numpy(np.ascontiguousarray(images[start:stop]))
                output = outputs_of((x.pin_memory() if cuda else x).to(device, non_blocking=True))
            except torch.OutOfMemoryError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                if cuda:
                    torch.cuda.empty_cache()
                continue
            on_batch(start, stop, output)
            bar.update(stop - start)
            start = stop
    bar.close()


def predict_top5(model, data_config: dict, images: np.ndarray, batch_size: int = 64, device="cpu",
                 desc: str | None = None, progress: bool = False, precision: str = "fp32") -> np.ndarray:
    """Top-5 class indices ``(N, 5)`` for uint8 images ``(N, 3, H, W)`` (batched as :func:`run_batches`)."""
    out = np.empty((len(images), 5), dtype=np.int64)

    def keep(start: int, stop: int, logits) -> None:
        out[start:stop] = logits.float().topk(5, dim=1).indices.cpu().numpy()

    run_batches(model, data_config, images, keep, batch_size, device, desc, progress, precision)
    return out
