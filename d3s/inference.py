"""Batched inference of a classifier on decoded images: device choice, normalisation on the device,
channels-last and autocast on CUDA, the batch halved on out-of-memory, top-5 predictions.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def on_device(model, data_config: dict, device="cpu") -> Callable:
    """The model on ``device``, as a function from an image batch already there (uint8 or float 0..255,
    ``(N, 3, H, W)``) to float outputs.

    Normalisation with the model's own mean/std happens on the device. On CUDA the model runs
    channels-last under bf16 (fp16 where bf16 is unsupported) autocast. Call it under
    ``torch.inference_mode()``.
    """
    import torch

    device = torch.device(device)
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
    mean = torch.tensor(data_config["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_config["std"], device=device).view(1, 3, 1, 1) * 255

    def logits(x):
        x = x.float().sub_(mean).div_(std) if x.dtype == torch.uint8 else (x - mean) / std
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=cuda):
            return model(x).float()

    return logits


def run_batches(model, data_config: dict, images: np.ndarray, on_batch: Callable, batch_size: int = 64, device="cpu",
                desc: str | None = None, progress: bool = False) -> None:
    """Run ``model`` (as :func:`on_device` wraps it) on uint8 images ``(N, 3, H, W)`` in batches, calling
    ``on_batch(start, stop, output)``; an out-of-memory batch is retried at half the size."""
    import torch
    from tqdm.auto import tqdm

    device = torch.device(device)
    cuda = device.type == "cuda"
    outputs_of = on_device(model, data_config, device)
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
                 desc: str | None = None, progress: bool = False) -> np.ndarray:
    """Top-5 class indices ``(N, 5)`` for uint8 images ``(N, 3, H, W)`` (batched as :func:`run_batches`)."""
    out = np.empty((len(images), 5), dtype=np.int64)

    def keep(start: int, stop: int, logits) -> None:
        out[start:stop] = logits.float().topk(5, dim=1).indices.cpu().numpy()

    run_batches(model, data_config, images, keep, batch_size, device, desc, progress)
    return out
